// An HTTPS server and client on Go's crypto/tls, for the TLS probe tests (standard library only).
//
//	main server PORT CERT KEY      answers GET /<anything> with JSON, 200 (404 for /missing..., /nope...)
//	main client CA URL...          GETs each URL in turn over one keep-alive connection
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func serve(port, cert, key string) error {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(r.URL.Path, "/missing") || strings.HasPrefix(r.URL.Path, "/nope") {
			w.WriteHeader(http.StatusNotFound)
		}
		fmt.Fprintf(w, "{\"path\": %q}\n", r.URL.Path)
	})
	// HTTP/1.1 only: ALPN must not pick h2 for a client that offers it.
	server := &http.Server{Addr: "127.0.0.1:" + port, Handler: handler,
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}}
	return server.ListenAndServeTLS(cert, key)
}

func fetch(ca string, urls []string) error {
	pem, err := os.ReadFile(ca)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	for _, url := range urls {
		response, err := client.Get(url)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, response.Body)
		response.Body.Close()
		fmt.Println(response.StatusCode, url)
	}
	return nil
}

func main() {
	var err error
	switch {
	case len(os.Args) == 5 && os.Args[1] == "server":
		err = serve(os.Args[2], os.Args[3], os.Args[4])
	case len(os.Args) >= 4 && os.Args[1] == "client":
		err = fetch(os.Args[2], os.Args[3:])
	default:
		err = fmt.Errorf("usage: %s server PORT CERT KEY | client CA URL...", os.Args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
