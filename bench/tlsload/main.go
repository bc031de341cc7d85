// Command tlsload is the tls-auth load of bench/smtp_ingress.py: SMTP sessions
// that each send one message on a connection of their own with STARTTLS and
// AUTH PLAIN, as apps do (EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT, DATA,
// QUIT).
//
// It exists because the load generator competes with the relays it measures
// for the same two cores: Python clients cost more CPU per message than the
// server they load, and capped the ratio the bench reports. Here all sessions
// are goroutines of one process, the way smtp-source (C) drives the other
// patterns. The bench builds it from this directory at run time (stdlib only,
// no module downloads) and keeps the binary under ~/.cache.
//
// The message comes on stdin (the bench's 2 KB message, sent as is and
// followed by ".\r\n"); the AUTH PLAIN argument (base64) comes in the
// environment variable TLSLOAD_AUTH_PLAIN, so the bench password is not in the
// process list; without it no AUTH is sent. The server certificate is verified
// against -ca for -server-name. With -resume, TLS sessions are resumed from
// one session cache shared by all sessions whenever the server hands out
// tickets; -resume=false makes every handshake a full one.
//
// On success it prints one line, "tlsload sent=N resumed=R seconds=S". Any
// reply other than the expected code, or any network or TLS error, ends the
// process with status 1 and the reason on stderr.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// step is one command after STARTTLS and the reply code it must get.
type step struct {
	verb string
	line []byte
	code string
}

// client is what every session shares.
type client struct {
	addr    string
	config  *tls.Config
	ehlo    []byte
	steps   []step        // EHLO, AUTH PLAIN (when asked for), MAIL, RCPT, DATA, the message, QUIT
	timeout time.Duration // for connecting, and for the whole session after that
}

// session reads replies from one connection; its buffers live as long as the goroutine.
type session struct {
	plain *bufio.Reader
	tls   *bufio.Reader
}

// expect reads one (multi-line) reply and fails unless every line starts with code.
func expect(reader *bufio.Reader, code string) error {
	for {
		line, err := reader.ReadSlice('\n') // a line longer than the buffer is an error too
		if err != nil {
			return fmt.Errorf("expected %s, got %q: %w", code, clip(line), err)
		}
		if len(line) < len(code) || string(line[:len(code)]) != code {
			return fmt.Errorf("expected %s, got %q", code, clip(line))
		}
		if len(line) < 4 || line[3] != '-' {
			return nil
		}
	}
}

func clip(line []byte) []byte {
	if len(line) > 200 {
		return line[:200]
	}
	return line
}

// command writes one command (named by verb in errors) and checks its reply.
func command(conn io.Writer, reader *bufio.Reader, verb string, line []byte, code string) error {
	if _, err := conn.Write(line); err != nil {
		return fmt.Errorf("sending %s: %w", verb, err)
	}
	if err := expect(reader, code); err != nil {
		return fmt.Errorf("%s: %w", verb, err)
	}
	return nil
}

// send delivers one message on a connection of its own; whether the TLS session was resumed.
func (c *client) send(s *session) (bool, error) {
	raw, err := net.DialTimeout("tcp", c.addr, c.timeout)
	if err != nil {
		return false, err
	}
	defer raw.Close() // no close_notify, as Python's SSLSocket.close(): QUIT has ended the session
	if err := raw.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return false, err
	}
	s.plain.Reset(raw)
	if err := expect(s.plain, "220"); err != nil {
		return false, fmt.Errorf("greeting: %w", err)
	}
	if err := command(raw, s.plain, "EHLO", c.ehlo, "250"); err != nil {
		return false, err
	}
	if err := command(raw, s.plain, "STARTTLS", []byte("STARTTLS\r\n"), "220"); err != nil {
		return false, err
	}
	if s.plain.Buffered() != 0 {
		return false, errors.New("the server sent data after its STARTTLS reply")
	}
	conn := tls.Client(raw, c.config)
	if err := conn.Handshake(); err != nil {
		return false, fmt.Errorf("TLS handshake: %w", err)
	}
	resumed := conn.ConnectionState().DidResume
	s.tls.Reset(conn)
	for _, next := range c.steps {
		if err := command(conn, s.tls, next.verb, next.line, next.code); err != nil {
			return resumed, err
		}
	}
	return resumed, nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tlsload: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	port := flag.Int("port", 0, "the server's port on -host")
	host := flag.String("host", "127.0.0.1", "the server's address")
	caFile := flag.String("ca", "", "PEM file of the CA that signed the server certificate")
	serverName := flag.String("server-name", "", "the name the certificate must carry")
	sessions := flag.Int("sessions", 16, "concurrent SMTP sessions")
	count := flag.Int("count", 0, "messages in all, one per connection")
	resume := flag.Bool("resume", true, "resume TLS sessions when the server gives tickets")
	helo := flag.String("helo", "client.bench.test", "the EHLO name")
	sender := flag.String("from", "", "MAIL FROM address")
	recipient := flag.String("to", "", "RCPT TO address")
	flag.Parse()
	if *port <= 0 || *caFile == "" || *serverName == "" || *sessions <= 0 || *count <= 0 || *sender == "" || *recipient == "" {
		fail("-port, -ca, -server-name, -count, -from and -to are required, -sessions and -count positive")
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail("%v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", *caFile)
	}
	text, err := io.ReadAll(os.Stdin)
	if err != nil || len(text) == 0 {
		fail("the message is read from stdin, got %d bytes (%v)", len(text), err)
	}
	config := &tls.Config{
		RootCAs:    roots,
		ServerName: *serverName,
		MinVersion: tls.VersionTLS12,
		// The groups of the OpenSSL 3.0 clients this replaces, X25519 first: no hybrid post-quantum key share,
		// which costs the client an ML-KEM key pair per handshake and the relays (OpenSSL 3.0) nothing.
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384},
		// The message goes in one record, as OpenSSL writes it, not in records of one TCP segment each.
		DynamicRecordSizingDisabled: true,
	}
	if *resume {
		config.ClientSessionCache = tls.NewLRUClientSessionCache(1) // one server name
	}
	ehlo := []byte("EHLO " + *helo + "\r\n")
	steps := []step{{"EHLO", ehlo, "250"}}
	if blob := os.Getenv("TLSLOAD_AUTH_PLAIN"); blob != "" {
		steps = append(steps, step{"AUTH", []byte("AUTH PLAIN " + blob + "\r\n"), "235"})
	}
	steps = append(steps,
		step{"MAIL", []byte("MAIL FROM:<" + *sender + ">\r\n"), "250"},
		step{"RCPT", []byte("RCPT TO:<" + *recipient + ">\r\n"), "250"},
		step{"DATA", []byte("DATA\r\n"), "354"},
		step{"the message", append(text, ".\r\n"...), "250"},
		step{"QUIT", []byte("QUIT\r\n"), "221"},
	)
	c := &client{addr: net.JoinHostPort(*host, strconv.Itoa(*port)), config: config, ehlo: ehlo, steps: steps, timeout: 30 * time.Second}

	var left, resumedCount atomic.Int64 // messages not yet started; handshakes resumed
	left.Store(int64(*count))
	var wait sync.WaitGroup
	started := time.Now()
	for range min(*sessions, *count) {
		wait.Add(1)
		go func() {
			defer wait.Done()
			s := &session{plain: bufio.NewReaderSize(nil, 4096), tls: bufio.NewReaderSize(nil, 4096)}
			for left.Add(-1) >= 0 {
				resumed, err := c.send(s)
				if err != nil {
					fail("%v", err) // the first failure ends the run: a load that half failed measures nothing
				}
				if resumed {
					resumedCount.Add(1)
				}
			}
		}()
	}
	wait.Wait()
	elapsed := time.Since(started).Seconds()
	fmt.Printf("tlsload sent=%d resumed=%d seconds=%.6f\n", *count, resumedCount.Load(), elapsed)
}
