// loadgen sends the rewrite engine's no-op merge patch to a pre-fetched list of Secrets as fast as
// the API server takes them: the benchmark's ceiling with no Python in the client (standard library
// only, HTTP/2 over TLS, no client-go, no list, no retries).
//
//	loadgen -server https://127.0.0.1:6443 -ca ca.crt -client-cert admin.crt -client-key admin.key \
//	    -concurrency 64 -input refs.txt          # or -token-file / -token; -input - reads stdin
//
// Each input line is "namespace/name" or "namespace/name uid resourceVersion"; with uid and
// resourceVersion the patch carries them as preconditions, exactly as the engine's does
// ({"metadata":{"uid":...,"resourceVersion":...}}), else it is {}. Both are no-op writes: the API
// server stores the object again only if it is stale (encrypted under another key than the write key).
// Answers are asked for as PartialObjectMetadata, so no Secret data comes back; bodies are discarded.
//
// It prints one JSON object: count, seconds, writes_per_s (2xx answers per second), errors (non-2xx
// and transport errors), statuses (HTTP status -> count, "transport" for failed requests), http2
// (answers that came over HTTP/2), latency_ms (p50, p90, p99, max). -connections spreads the workers
// over that many HTTP/2 connections. Exit status 2 means bad flags or
// input (the message names the flag or the line); 0 otherwise, even with errors (they are in the JSON).
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const metadataOnly = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

type ref struct {
	namespace, name, uid, resourceVersion string
}

type result struct {
	Count      int                `json:"count"`
	Seconds    float64            `json:"seconds"`
	WritesPerS float64            `json:"writes_per_s"`
	Errors     int                `json:"errors"`
	Statuses   map[string]int     `json:"statuses"`
	HTTP2      int                `json:"http2"`
	LatencyMs  map[string]float64 `json:"latency_ms"`
	FirstError string             `json:"first_error,omitempty"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func readRefs(r io.Reader) ([]ref, error) {
	var refs []ref
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for line := 1; scanner.Scan(); line++ {
		fields := strings.Fields(scanner.Text())
		if len(fields) == 0 {
			continue
		}
		ns, name, ok := strings.Cut(fields[0], "/")
		if !ok || ns == "" || name == "" || (len(fields) != 1 && len(fields) != 3) {
			return nil, fmt.Errorf("-input line %d: want \"namespace/name\" or \"namespace/name uid resourceVersion\", got %q",
				line, scanner.Text())
		}
		r := ref{namespace: ns, name: name}
		if len(fields) == 3 {
			r.uid, r.resourceVersion = fields[1], fields[2]
		}
		refs = append(refs, r)
	}
	return refs, scanner.Err()
}

func patchBody(r ref) []byte {
	if r.uid == "" {
		return []byte("{}")
	}
	body, _ := json.Marshal(map[string]any{"metadata": map[string]string{"uid": r.uid, "resourceVersion": r.resourceVersion}})
	return body
}

func client(caFile, certFile, keyFile string, concurrency int, timeout time.Duration) (*http.Client, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no PEM certificate in it", caFile)
		}
		conf.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("-client-cert and -client-key go together: give both or neither")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("-client-cert/-client-key: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	transport := &http.Transport{
		TLSClientConfig:     conf,
		ForceAttemptHTTP2:   true, // a custom TLS config turns HTTP/2 off unless asked for
		MaxIdleConnsPerHost: concurrency,
		IdleConnTimeout:     90 * time.Second,
	}
	return &http.Client{Transport: transport, Timeout: timeout}, nil
}

func percentiles(ms []float64) map[string]float64 {
	out := map[string]float64{}
	if len(ms) == 0 {
		return out
	}
	sort.Float64s(ms)
	at := func(p float64) float64 { // nearest rank
		rank := int(float64(len(ms))*p/100 + 0.999999)
		if rank < 1 {
			rank = 1
		}
		if rank > len(ms) {
			rank = len(ms)
		}
		return ms[rank-1]
	}
	for _, p := range []float64{50, 90, 99} {
		out["p"+strconv.Itoa(int(p))] = at(p)
	}
	out["max"] = ms[len(ms)-1]
	return out
}

func main() {
	server := flag.String("server", "", "API server URL, e.g. https://127.0.0.1:6443 (required)")
	caFile := flag.String("ca", "", "PEM CA bundle that signed the API server's certificate")
	certFile := flag.String("client-cert", "", "PEM client certificate (with -client-key)")
	keyFile := flag.String("client-key", "", "PEM client key (with -client-cert)")
	token := flag.String("token", "", "bearer token (prefer -token-file: flags show in ps)")
	tokenFile := flag.String("token-file", "", "file holding the bearer token")
	input := flag.String("input", "-", "file of \"namespace/name [uid resourceVersion]\" lines ('-' for stdin)")
	concurrency := flag.Int("concurrency", 64, "requests in flight at once")
	connections := flag.Int("connections", 1, "HTTP/2 connections the requests are spread over (streams multiplex on each)")
	timeout := flag.Duration("timeout", 60*time.Second, "timeout of one request")
	flag.Parse()

	if *server == "" || !strings.HasPrefix(*server, "https://") {
		fail("-server: an https:// URL of the API server is required (got %q)", *server)
	}
	if *concurrency < 1 {
		fail("-concurrency: must be at least 1 (got %d)", *concurrency)
	}
	if *connections < 1 {
		fail("-connections: must be at least 1 (got %d)", *connections)
	}
	if *tokenFile != "" {
		raw, err := os.ReadFile(*tokenFile)
		if err != nil {
			fail("-token-file: %v", err)
		}
		*token = strings.TrimSpace(string(raw))
	}
	var in io.Reader = os.Stdin
	if *input != "-" {
		f, err := os.Open(*input)
		if err != nil {
			fail("-input: %v", err)
		}
		defer f.Close()
		in = f
	}
	refs, err := readRefs(in)
	if err != nil {
		fail("%v", err)
	}
	// One transport per connection: a transport keeps one HTTP/2 connection per host and multiplexes
	// every stream over it. More than one lets a run check whether that single connection is a limit
	// (on the 2-core lab, 1 and 8 gave the same rate within its noise).
	clients := make([]*http.Client, *connections)
	for i := range clients {
		c, err := client(*caFile, *certFile, *keyFile, *concurrency, *timeout)
		if err != nil {
			fail("%v", err)
		}
		clients[i] = c
	}
	base := strings.TrimSuffix(*server, "/")

	jobs := make(chan ref)
	var mu sync.Mutex
	res := result{Count: len(refs), Statuses: map[string]int{}}
	latencies := make([]float64, 0, len(refs))
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *concurrency; i++ {
		wg.Add(1)
		httpClient := clients[i%len(clients)]
		go func() {
			defer wg.Done()
			for r := range jobs {
				req, err := http.NewRequest(http.MethodPatch,
					base+"/api/v1/namespaces/"+r.namespace+"/secrets/"+r.name, bytes.NewReader(patchBody(r)))
				if err != nil {
					fail("building the request for %s/%s: %v", r.namespace, r.name, err)
				}
				req.Header.Set("Content-Type", "application/merge-patch+json")
				req.Header.Set("Accept", metadataOnly)
				if *token != "" {
					req.Header.Set("Authorization", "Bearer "+*token)
				}
				t0 := time.Now()
				resp, err := httpClient.Do(req)
				key, h2 := "transport", false
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body) // metadata only; read to reuse the stream
					resp.Body.Close()
					key, h2 = strconv.Itoa(resp.StatusCode), resp.ProtoMajor == 2
				}
				ms := float64(time.Since(t0).Microseconds()) / 1000
				mu.Lock()
				res.Statuses[key]++
				latencies = append(latencies, ms)
				if h2 {
					res.HTTP2++
				}
				if err != nil || resp.StatusCode >= 300 {
					res.Errors++
					if res.FirstError == "" {
						if err != nil {
							res.FirstError = err.Error()
						} else {
							res.FirstError = fmt.Sprintf("%s/%s: HTTP %d", r.namespace, r.name, resp.StatusCode)
						}
					}
				}
				mu.Unlock()
			}
		}()
	}
	for _, r := range refs {
		jobs <- r
	}
	close(jobs)
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	if res.Seconds > 0 {
		res.WritesPerS = float64(res.Count-res.Errors) / res.Seconds
	}
	res.LatencyMs = percentiles(latencies)
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
