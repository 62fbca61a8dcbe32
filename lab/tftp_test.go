package lab

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTFTPLoopback downloads files whose contents once broke a client (NUL
// bytes) and whose sizes are on and off block boundaries, on the loopback.
func TestTFTPLoopback(t *testing.T) {
	root := t.TempDir()
	l, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.LocalAddr().String()
	l.Close()
	var log bytes.Buffer
	go ServeTFTP(addr, root, &log)
	time.Sleep(100 * time.Millisecond)

	// No empty file: pack.ag/tftp's server sends no final block for one;
	// the lab serves only files with content.
	for _, size := range []int{1, 511, 512, 513, 1024, DemoFileSize, 40000} {
		want := bytes.Repeat([]byte{0, 1, 0, 0, 7}, size/5+1)[:size]
		name := "f" + strings.Repeat("x", size%7)
		if err := os.WriteFile(filepath.Join(root, name), want, 0o644); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		n, err := GetTFTP(addr, name, &got)
		if err != nil || n != int64(size) || !bytes.Equal(got.Bytes(), want) {
			t.Errorf("size %d: got %d bytes, err %v, equal %v", size, n, err, bytes.Equal(got.Bytes(), want))
		}
	}
	if _, err := GetTFTP(addr, "missing", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "server error 1") {
		t.Errorf("a missing file: %v, want the server's error 1 (file not found)", err)
	}
	if !strings.Contains(log.String(), "RRQ f from 127.0.0.1:") {
		t.Errorf("the server's log does not name the client:\n%s", log.String())
	}
}
