// Command tlssink is the shared upstream of bench/queue.py: an SMTP server on
// 127.0.0.1 that wants STARTTLS and AUTH, as a provider's submission server
// does, and counts every message it accepts, discarding it.
//
// It exists because the upstream competes with the contenders it serves for
// the same two cores: the Postfix smtpd (STARTTLS, Cyrus SASL) that proxied
// every transaction to a counting smtp-sink cost more CPU per message than
// the gateways it measured, and compressed every ratio the bench reports.
// Here every connection is a goroutine of one process. The bench builds it
// from this directory at run time (stdlib only, no module downloads) and keeps
// the binary under ~/.cache.
//
// The session: a 220 greeting; EHLO advertises PIPELINING, SIZE, 8BITMIME and,
// before TLS, STARTTLS, after it AUTH PLAIN LOGIN (AUTH is never offered nor
// accepted in the clear); MAIL needs a successful AUTH; MAIL, RCPT, DATA,
// RSET, NOOP, HELO and QUIT as RFC 5321 has them. Commands are read line by
// line from a buffered reader and answered in order; replies are flushed when
// the reader has no more input buffered (Postfix's rule), so pipelined
// commands get their replies in one write. The message is dot-unstuffed and
// its size checked against -size; it is counted once the 250 that answers
// its final dot was written to the client.
//
// The login is -user; its password comes in the environment variable
// TLSSINK_PASSWORD, so it is not in the process list. The certificate and key
// are PEM files (-cert, -key).
//
// Counting: stdout first gets "listening PORT" (-listen may ask for port 0),
// then a line "mesg=N" (N the messages counted so far)
// whenever the count changed, lines coalescing while one is written (the
// format smtp-sink -c prints, which the bench already reads). Sessions that
// fail (TLS, AUTH, I/O errors) are reported on stderr, never with the
// password.
package main

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

const (
	maxLine     = 4096 // the longest command line; longer ones are refused (RFC 5321 allows 512)
	readBuffer  = 32 << 10
	writeBuffer = 4096
	errorLimit  = 20 // Postfix's smtpd_hard_error_limit
)

// server is what every session shares.
type server struct {
	hostname string
	tls      *tls.Config
	user     []byte
	password []byte
	maxSize  int64
	timeout  time.Duration

	count   atomic.Int64
	changed chan struct{} // capacity 1: a pending "count changed" for the printer
}

// counted adds n messages whose 250 reached the client and wakes the printer.
func (s *server) counted(n int64) {
	s.count.Add(n)
	select {
	case s.changed <- struct{}{}:
	default: // a wake-up is already pending: the printer will read the newest count
	}
}

// print writes "mesg=N" whenever the count changed; writes that queue up coalesce into one line.
func (s *server) print() {
	var last int64
	for range s.changed {
		if n := s.count.Load(); n != last {
			last = n
			if _, err := fmt.Fprintf(os.Stdout, "mesg=%d\n", n); err != nil {
				fmt.Fprintf(os.Stderr, "tlssink: writing the count: %v\n", err)
				os.Exit(1) // the bench is gone or cannot count: nothing left to serve
			}
		}
	}
}

// session is one client connection.
type session struct {
	s       *server
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	tls     bool
	helo    bool
	authed  bool
	mail    bool
	rcpts   int
	errors  int
	pending int64 // messages answered 250 in replies not yet written to the client
	closing bool
}

var errQuit = errors.New("quit")

// reply queues one reply line (code and text) for the next flush.
func (c *session) reply(line string) {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
}

// flush writes the queued replies; messages whose 250 was among them are counted now.
func (c *session) flush() error {
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.pending > 0 {
		c.s.counted(c.pending)
		c.pending = 0
	}
	return nil
}

// readLine is the next line of input, CRLF included (the slice is valid until the next read). Before it would
// block it flushes the replies queued so far: pipelined commands are answered in one write, and no client
// waits for a reply the server still holds.
func (c *session) readLine() ([]byte, error) {
	if c.r.Buffered() == 0 {
		if err := c.conn.SetDeadline(time.Now().Add(c.s.timeout)); err != nil { // for the flush and the read
			return nil, err
		}
		if err := c.flush(); err != nil {
			return nil, err
		}
	}
	return c.r.ReadSlice('\n')
}

// command reads one command line; a line longer than maxLine is discarded and refused.
func (c *session) command() ([]byte, error) {
	line, err := c.readLine()
	if errors.Is(err, bufio.ErrBufferFull) || (err == nil && len(line) > maxLine) {
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = c.r.ReadSlice('\n')
		}
		if err != nil {
			return nil, err
		}
		c.fail("500 5.5.0 Error: line too long")
		return nil, nil
	}
	return line, err
}

// fail queues an error reply; after errorLimit of them the session ends, as Postfix ends it.
func (c *session) fail(line string) {
	c.reply(line)
	c.errors++
	if c.errors >= errorLimit {
		c.reply("421 4.7.0 " + c.s.hostname + " Error: too many errors")
		c.closing = true
	}
}

func (c *session) reset() {
	c.mail = false
	c.rcpts = 0
}

func (s *server) serve(raw net.Conn) {
	c := &session{s: s, conn: raw, r: bufio.NewReaderSize(raw, readBuffer), w: bufio.NewWriterSize(raw, writeBuffer)}
	defer func() {
		c.conn.Close() // after a flush error or QUIT; a reply lost with the connection was never counted
	}()
	c.reply("220 " + s.hostname + " ESMTP tlssink")
	for !c.closing {
		line, err := c.command()
		if err == nil && line != nil {
			err = c.handle(line)
		}
		if errors.Is(err, errQuit) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			break
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tlssink: session from %s: %v\n", raw.RemoteAddr(), err)
			return
		}
	}
	c.flush() // QUIT's 221, or the 421 of too many errors; the client may be gone already
}

// handle answers one command line.
func (c *session) handle(line []byte) error {
	text := bytes.TrimRight(line, "\r\n")
	verb, arg, _ := bytes.Cut(text, []byte(" "))
	switch string(bytes.ToUpper(verb)) {
	case "EHLO":
		if len(arg) == 0 {
			c.fail("501 5.5.4 Syntax: EHLO hostname")
			return nil
		}
		c.reset()
		c.helo = true
		c.reply("250-" + c.s.hostname)
		c.reply("250-PIPELINING")
		c.reply("250-SIZE " + strconv.FormatInt(c.s.maxSize, 10))
		if c.tls {
			c.reply("250-AUTH PLAIN LOGIN")
		} else {
			c.reply("250-STARTTLS")
		}
		c.reply("250 8BITMIME")
	case "HELO":
		if len(arg) == 0 {
			c.fail("501 5.5.4 Syntax: HELO hostname")
			return nil
		}
		c.reset()
		c.helo = true
		c.reply("250 " + c.s.hostname)
	case "STARTTLS":
		return c.startTLS(arg)
	case "AUTH":
		return c.auth(arg)
	case "MAIL":
		c.mailFrom(arg)
	case "RCPT":
		c.rcptTo(arg)
	case "DATA":
		return c.data(arg)
	case "RSET":
		c.reset()
		c.reply("250 2.0.0 Ok")
	case "NOOP":
		c.reply("250 2.0.0 Ok")
	case "QUIT":
		c.reply("221 2.0.0 Bye")
		return errQuit
	default:
		c.fail("502 5.5.2 Error: command not recognized")
	}
	return nil
}

func (c *session) startTLS(arg []byte) error {
	switch {
	case c.tls:
		c.fail("554 5.5.1 Error: TLS already active")
		return nil
	case len(arg) != 0:
		c.fail("501 5.5.4 Syntax: STARTTLS")
		return nil
	}
	c.reply("220 2.0.0 Ready to start TLS")
	if err := c.flush(); err != nil {
		return err
	}
	if err := c.conn.SetDeadline(time.Now().Add(c.s.timeout)); err != nil {
		return err
	}
	conn := tls.Server(c.conn, c.s.tls)
	if err := conn.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	// Whatever the client pipelined after STARTTLS in the clear is dropped with the old reader (the fix of
	// CVE-2011-0411), and the session starts over: no HELO, no AUTH (RFC 3207).
	c.conn, c.tls, c.helo = conn, true, false
	c.r.Reset(conn)
	c.w.Reset(conn)
	c.reset()
	return nil
}

// response reads the client's answer to a 334 challenge, base64-decoded; ok is false when it cancelled ("*")
// or sent something that is not base64 (the failure reply is queued then).
func (c *session) response(challenge string) (decoded []byte, ok bool, err error) {
	c.reply("334 " + challenge)
	line, err := c.command()
	if err != nil || line == nil {
		return nil, false, err
	}
	return c.decode(bytes.TrimRight(line, "\r\n"))
}

func (c *session) decode(text []byte) ([]byte, bool, error) {
	if string(text) == "*" {
		c.fail("501 5.7.0 Authentication aborted")
		return nil, false, nil
	}
	decoded := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(decoded, text)
	if err != nil {
		c.fail("501 5.5.2 Error: malformed base64 in authentication response")
		return nil, false, nil
	}
	return decoded[:n], true, nil
}

func (c *session) auth(arg []byte) error {
	switch {
	case !c.tls:
		c.fail("503 5.5.1 Error: authentication not enabled")
		return nil
	case !c.helo:
		c.fail("503 5.5.1 Error: send HELO/EHLO first")
		return nil
	case c.authed:
		c.fail("503 5.5.1 Error: already authenticated")
		return nil
	case c.mail:
		c.fail("503 5.5.1 Error: MAIL transaction in progress")
		return nil
	}
	mechanism, initial, _ := bytes.Cut(arg, []byte(" "))
	var user, password []byte
	switch string(bytes.ToUpper(mechanism)) {
	case "PLAIN":
		var blob []byte
		var ok bool
		var err error
		switch {
		case string(initial) == "=": // an empty initial response (RFC 4954)
			ok = true
		case len(initial) > 0:
			blob, ok, err = c.decode(initial)
		default:
			blob, ok, err = c.response("")
		}
		if !ok {
			return err
		}
		parts := bytes.Split(blob, []byte{0})
		if len(parts) != 3 || (len(parts[0]) > 0 && !bytes.Equal(parts[0], parts[1])) {
			c.fail("535 5.7.8 Error: authentication failed: malformed PLAIN response")
			return nil
		}
		user, password = parts[1], parts[2]
	case "LOGIN":
		var ok bool
		var err error
		if len(initial) > 0 {
			user, ok, err = c.decode(initial)
		} else {
			user, ok, err = c.response("VXNlcm5hbWU6") // "Username:"
		}
		if !ok {
			return err
		}
		if password, ok, err = c.response("UGFzc3dvcmQ6"); !ok { // "Password:"
			return err
		}
	default:
		c.fail("504 5.5.4 Unrecognized authentication type")
		return nil
	}
	userOK := subtle.ConstantTimeCompare(user, c.s.user)
	passwordOK := subtle.ConstantTimeCompare(password, c.s.password)
	if userOK&passwordOK != 1 {
		c.fail("535 5.7.8 Error: authentication failed: authentication failure")
		return nil
	}
	c.authed = true
	c.reply("235 2.7.0 Authentication successful")
	return nil
}

// path checks "FROM:<address> params" or "TO:<address> params" (the keyword case-insensitive, a space
// allowed after the colon) and returns the parameters.
func path(arg []byte, keyword string) ([]byte, bool) {
	if len(arg) < len(keyword) || !bytes.EqualFold(arg[:len(keyword)], []byte(keyword)) {
		return nil, false
	}
	rest := bytes.TrimLeft(arg[len(keyword):], " ")
	if len(rest) == 0 || rest[0] != '<' {
		return nil, false
	}
	end := bytes.IndexByte(rest, '>')
	if end < 0 {
		return nil, false
	}
	return bytes.TrimSpace(rest[end+1:]), true
}

func (c *session) mailFrom(arg []byte) {
	switch {
	case !c.helo:
		c.fail("503 5.5.1 Error: send HELO/EHLO first")
		return
	case !c.tls:
		c.fail("530 5.7.0 Must issue a STARTTLS command first")
		return
	case !c.authed:
		c.fail("530 5.7.0 Authentication required")
		return
	case c.mail:
		c.fail("503 5.5.1 Error: nested MAIL command")
		return
	}
	params, ok := path(arg, "FROM:")
	if !ok {
		c.fail("501 5.5.4 Syntax: MAIL FROM:<address>")
		return
	}
	for _, param := range bytes.Fields(params) {
		name, value, _ := bytes.Cut(param, []byte("="))
		switch string(bytes.ToUpper(name)) {
		case "SIZE":
			size, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || size < 0 {
				c.fail("501 5.5.4 Bad message size syntax")
				return
			}
			if size > c.s.maxSize {
				c.fail("552 5.3.4 Message size exceeds fixed limit")
				return
			}
		case "AUTH": // RFC 4954's AUTH=<mailbox>, which an authenticated client may send
		case "BODY":
			if v := string(bytes.ToUpper(value)); v != "7BIT" && v != "8BITMIME" {
				c.fail("501 5.5.4 Unsupported BODY parameter")
				return
			}
		default:
			c.fail("555 5.5.4 Unsupported option: " + string(name))
			return
		}
	}
	c.mail = true
	c.reply("250 2.1.0 Ok")
}

func (c *session) rcptTo(arg []byte) {
	if !c.mail {
		c.fail("503 5.5.1 Error: need MAIL command")
		return
	}
	if _, ok := path(arg, "TO:"); !ok {
		c.fail("501 5.5.4 Syntax: RCPT TO:<address>")
		return
	}
	c.rcpts++
	c.reply("250 2.1.5 Ok")
}

// data reads the message up to its final dot, dot-unstuffed, keeping only its size.
func (c *session) data(arg []byte) error {
	switch {
	case len(arg) != 0:
		c.fail("501 5.5.4 Syntax: DATA")
		return nil
	case !c.mail:
		c.fail("503 5.5.1 Error: need MAIL command")
		return nil
	case c.rcpts == 0:
		c.fail("554 5.5.1 Error: no valid recipients")
		return nil
	}
	c.reply("354 End data with <CR><LF>.<CR><LF>")
	var size int64
	start := true // at the start of a line: a longer line arrives in buffer-sized pieces
	for {
		line, err := c.readLine()
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return fmt.Errorf("reading DATA: %w", err)
		}
		if start && len(line) > 0 && line[0] == '.' {
			if err == nil && (string(line) == ".\r\n" || string(line) == ".\n") {
				break
			}
			line = line[1:] // the stuffed dot
		}
		size += int64(len(line))
		start = err == nil
	}
	c.reset()
	if size > c.s.maxSize {
		c.fail("552 5.3.4 Message size exceeds fixed limit")
		return nil
	}
	c.pending++
	c.reply("250 2.0.0 Ok: queued")
	return nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tlssink: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	hostname := flag.String("hostname", "upstream.bench.test", "the name in the greeting and EHLO reply")
	certFile := flag.String("cert", "", "PEM certificate (chain) for STARTTLS")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	user := flag.String("user", "", "the one AUTH login; its password is in $TLSSINK_PASSWORD")
	maxSize := flag.Int64("size", 10<<20, "the SIZE limit in bytes")
	timeout := flag.Duration("timeout", 300*time.Second, "idle time after which a session is dropped")
	flag.Parse()
	password := os.Getenv("TLSSINK_PASSWORD")
	if *certFile == "" || *keyFile == "" || *user == "" || password == "" {
		fail("-cert, -key, -user and $TLSSINK_PASSWORD are required")
	}
	certificate, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fail("%v", err)
	}
	s := &server{
		hostname: *hostname,
		tls: &tls.Config{
			Certificates: []tls.Certificate{certificate},
			MinVersion:   tls.VersionTLS12,
			// The groups OpenSSL 3.0 offers, X25519 first: no hybrid post-quantum key exchange, which the
			// contenders' OpenSSL does not offer anyway.
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384},
		},
		user:     []byte(*user),
		password: []byte(password),
		maxSize:  *maxSize,
		timeout:  *timeout,
		changed:  make(chan struct{}, 1),
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("%v", err)
	}
	// The port comes first, on its own line, before any count: the bench starts reading counts after it.
	fmt.Printf("listening %d\n", listener.Addr().(*net.TCPAddr).Port)
	go s.print()
	for {
		conn, err := listener.Accept()
		if err != nil { // out of file descriptors, say: let sessions end
			fmt.Fprintf(os.Stderr, "tlssink: accept: %v\n", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go s.serve(conn)
	}
}
