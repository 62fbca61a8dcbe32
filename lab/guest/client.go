package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Client talks to a guest's server at addr (IP:Port) through dial, which
// opens connections from a namespace that reaches it (the underlay's).
type Client struct {
	Addr string
	http *http.Client
}

// NewClient is a client of the guest at ip, its connections made by dial.
func NewClient(ip string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	return &Client{
		Addr: net.JoinHostPort(ip, fmt.Sprint(Port)),
		http: &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}},
	}
}

// Exec runs argv in the guest and returns its result; err is about
// reaching the guest, not the command's exit status.
func (c *Client) Exec(ctx context.Context, stdin []byte, argv ...string) (*ExecResult, error) {
	body, _ := json.Marshal(ExecRequest{Argv: argv, Stdin: stdin, Timeout: 2 * time.Minute})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.Addr+"/exec", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reaching the guest at %s: %w", c.Addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("the guest at %s: %s: %s", c.Addr, resp.Status, b)
	}
	var res ExecResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return nil, fmt.Errorf("reading the guest's answer: %w", err)
	}
	return &res, nil
}

// Output runs argv in the guest and returns its standard output, or an
// error with its standard error when it fails.
func (c *Client) Output(ctx context.Context, argv ...string) (string, error) {
	res, err := c.Exec(ctx, nil, argv...)
	if err != nil {
		return "", err
	}
	if res.Code != 0 {
		return string(res.Stdout), fmt.Errorf("%s in the guest: exit %d: %s", strings.Join(argv, " "), res.Code, strings.TrimSpace(string(res.Stderr)))
	}
	return string(res.Stdout), nil
}

// Capture records iface in the guest for d and returns the pcap file.
func (c *Client) Capture(ctx context.Context, iface string, d time.Duration) ([]byte, error) {
	url := fmt.Sprintf("http://%s/capture?iface=%s&seconds=%f", c.Addr, iface, d.Seconds())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("capturing on the guest's %s: %w", iface, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("capturing on the guest's %s: %s: %s", iface, resp.Status, b)
	}
	return b, err
}

// Healthy says whether the guest's server answers.
func (c *Client) Healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Addr+"/healthz", nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
