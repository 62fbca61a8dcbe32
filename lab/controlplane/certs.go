package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// pki is what kube-apiserver needs to serve TLS, authenticate its admin and
// sign service-account tokens, written as PEM files into a directory.
type pki struct {
	CACert, ServingCert, ServingKey string
	AdminCert, AdminKey             string
	SAKey, SAPub                    string
	// KubeletClientCert and KubeletClientKey are kube-apiserver's
	// credential towards the kubelets (exec, logs, port-forward).
	KubeletClientCert, KubeletClientKey string

	caPEM, adminCertPEM, adminKeyPEM []byte
	ca                               *x509.Certificate
	caKey                            *ecdsa.PrivateKey
	notBefore                        time.Time
	mu                               sync.Mutex // serial
	serial                           int64
}

// leaf issues a certificate signed by the CA, returned as PEM.
func (p *pki) leaf(cn string, orgs []string, usage x509.ExtKeyUsage, ips []net.IP, dns []string) ([]byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	p.mu.Lock()
	p.serial++
	serial := p.serial
	p.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    p.notBefore,
		NotAfter:     p.notBefore.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
		DNSNames:     dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", keyDER), nil
}

func newPKI(dir string, ips []net.IP) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "calyx-lab-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("creating the CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)

	p := &pki{ca: ca, caKey: caKey, notBefore: now, serial: 1}
	servingCert, servingKey, err := p.leaf("kube-apiserver", nil, x509.ExtKeyUsageServerAuth,
		append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)}, ips...),
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return nil, fmt.Errorf("creating the serving certificate: %w", err)
	}
	// system:masters is the group RBAC lets do anything: the admin credential.
	adminCert, adminKey, err := p.leaf("calyx-admin", []string{"system:masters"}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("creating the admin certificate: %w", err)
	}
	// As kubeadm's apiserver-kubelet-client: a member of a group that may
	// use the kubelets' API.
	kubeletCert, kubeletKey, err := p.leaf("kube-apiserver-kubelet-client", []string{"system:masters"}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("creating the kubelet client certificate: %w", err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}

	p.CACert = filepath.Join(dir, "ca.crt")
	p.ServingCert, p.ServingKey = filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")
	p.AdminCert, p.AdminKey = filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	p.SAKey, p.SAPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	p.KubeletClientCert, p.KubeletClientKey = filepath.Join(dir, "apiserver-kubelet-client.crt"), filepath.Join(dir, "apiserver-kubelet-client.key")
	p.caPEM, p.adminCertPEM, p.adminKeyPEM = pemBlock("CERTIFICATE", caDER), adminCert, adminKey
	for path, data := range map[string][]byte{
		p.KubeletClientCert: kubeletCert,
		p.KubeletClientKey:  kubeletKey,
		p.CACert:            p.caPEM,
		p.ServingCert:       servingCert,
		p.ServingKey:        servingKey,
		p.AdminCert:         adminCert,
		p.AdminKey:          adminKey,
		p.SAKey:             pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)),
		p.SAPub:             pemBlock("PUBLIC KEY", saPub),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
