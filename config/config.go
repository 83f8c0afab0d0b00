package config

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/urbd/urbd/bitmap"
	"github.com/urbd/urbd/handlers"
	"github.com/urbd/urbd/replica"
)

// Sentinel errors, wrapped by every *Error.
var (
	ErrRead       = errors.New("config: cannot read file")
	ErrSyntax     = errors.New("config: syntax error")
	ErrUnknownKey = errors.New("config: unknown key")
	ErrBadValue   = errors.New("config: bad value")
	ErrMissingKey = errors.New("config: missing key")
	ErrNoResource = errors.New("config: no such resource")
	ErrNoNode     = errors.New("config: no such node")
	ErrNodeCount  = errors.New("config: a resource needs exactly two nodes")
	ErrDuplicate  = errors.New("config: duplicate value")
)

// Defaults, used when neither [common] nor the resource sets a value.
const (
	DefaultProtocol      = "C"
	DefaultResyncRate    = 100 << 20 // bytes per second
	DefaultTimeout       = 6 * time.Second
	DefaultOnPeerLoss    = OnPeerLossContinue
	DefaultFencing       = "dont-care"
	DefaultAfterSB       = "disconnect" // after-sb-0pri and after-sb-1pri
	DefaultOnIOError     = "detach"
	DefaultCsumsAlg      = "none"
	DefaultReadBalancing = "prefer-local"
	DefaultBitmapBlock   = 4 << 10
	DefaultALExtents     = bitmap.DefaultALExtents // 1237, DRBD's
	DefaultKoCount       = replica.DefaultKoCount  // 7, DRBD's
	DefaultOnCongestion  = "block"
	DefaultAutoPromote   = "no"
	// DefaultCongestionFill (off) and DefaultCongestionExtents (its
	// default al-extents) are DRBD's congestion-fill and
	// congestion-extents.
	DefaultCongestionFill    = 0
	DefaultCongestionExtents = bitmap.DefaultALExtents
)

// Bounds of bitmap-block, a power of two.
const (
	MinBitmapBlock = 512
	MaxBitmapBlock = 64 << 20
)

// Bounds of al-extents (DRBD's).
const (
	MinALExtents = 67
	MaxALExtents = 65534
)

// CheckALExtents says what is wrong with n as al-extents, or nil; the
// resource file and the --al-extents flag both check with it.
func CheckALExtents(n int) error {
	if n < MinALExtents || n > MaxALExtents {
		return fmt.Errorf("al-extents %d: use %d to %d (DRBD's range; default %d)", n, MinALExtents, MaxALExtents, DefaultALExtents)
	}
	return nil
}

// MaxFileSize bounds the resource file read by Load.
const MaxFileSize = 1 << 20

// Error is one problem in a resource file. Line is 0 when no line applies
// (a resource or node that is not in the file at all).
type Error struct {
	File string
	Line int
	Err  error // one of the sentinels
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Resource is the flat configuration of one resource as seen from one node,
// the equivalent of `urbd up`'s flags.
type Resource struct {
	Name     string // resource name
	Node     string // this node
	PeerNode string // the other node

	Disk       string // backing disk or file of this node
	Meta       string // metadata directory of this node
	NBD        string // NBD listen address, "unix:PATH" or "tcp:HOST:PORT"
	ListenPeer string // this node's address: where it listens for the peer
	Peer       string // the other node's address

	Protocol    string // "A", "B" or "C"
	ResyncRate  int64  // bytes per second
	SecretFile  string // shared secret; "" for none
	TLSCert     string // all three TLS files or none
	TLSKey      string
	TLSCA       string
	Timeout     time.Duration // peer loss detection
	KoCount     int           // ko-count: a peer that leaves I/O unanswered this many timeouts is dropped; 0 never
	DiskTimeout time.Duration // disk-timeout: a Primary's disk that leaves a request unanswered this long is detached, a Secondary leaves its Primary; 0 never
	OnPeerLoss  string        // OnPeerLossContinue or OnPeerLossSuspend
	Fencing     string        // dont-care, resource-only or resource-and-stonith
	AfterSB0Pri string        // after-sb-0pri: disconnect, discard-zero-changes or discard-least-changes
	AfterSB1Pri string        // after-sb-1pri: disconnect, consensus or discard-secondary
	OnIOError   string        // on-io-error: detach or pass_on
	CsumsAlg    string        // csums-alg: sha256 or none
	// ReadBalancing is read-balancing: prefer-local, prefer-remote,
	// round-robin, least-pending, when-congested-remote or 32K- to
	// 1M-striping, as replica.ParseReadBalancing spells it.
	ReadBalancing string
	// TCPCongestion is tcp-congestion: a congestion control name or
	// "system"; "" when neither [common] nor the resource sets it (urbd up
	// then uses its default).
	TCPCongestion string
	AutoPromote   string // auto-promote: yes or no
	// OnCongestion is on-congestion (block, pull-ahead or disconnect),
	// with its thresholds congestion-fill (bytes) and congestion-extents;
	// 0 turns a threshold off.
	OnCongestion      string
	CongestionFill    int64
	CongestionExtents int
	BitmapBlock       int64 // bytes per bitmap bit, a power of two
	ALExtents         int   // activity-log slots of one extent (4 MiB) each

	Handlers      map[string]string // event -> shell command; the caller owns this copy
	MetricsListen string            // HOST:PORT for Prometheus, "" for none
}

// File is a loaded and checked resource file.
type File struct {
	path      string
	resources map[string]*resourceEntry
}

type resourceEntry struct {
	line  int
	nodes map[string]*Resource // fully merged, per node
}

// The decoded shape of the file. Keys not mapped here are unknown keys.
type fileTOML struct {
	Common   commonTOML              `toml:"common"`
	Resource map[string]resourceTOML `toml:"resource"`
	Handlers map[string]string       `toml:"handlers"`
}

// commonTOML is the [common] table: the keys a resource may also set.
type commonTOML struct {
	Protocol      protocolValue      `toml:"protocol"`
	ResyncRate    rateValue          `toml:"resync-rate"`
	SecretFile    string             `toml:"secret-file"`
	TLSCert       string             `toml:"tls-cert"`
	TLSKey        string             `toml:"tls-key"`
	TLSCA         string             `toml:"tls-ca"`
	Timeout       durationValue      `toml:"timeout"`
	KoCount       countValue         `toml:"ko-count"`
	DiskTimeout   diskTimeoutValue   `toml:"disk-timeout"`
	OnPeerLoss    peerLossValue      `toml:"on-peer-loss"`
	Fencing       fencingValue       `toml:"fencing"`
	AfterSB0Pri   afterSB0Value      `toml:"after-sb-0pri"`
	AfterSB1Pri   afterSB1Value      `toml:"after-sb-1pri"`
	OnIOError     onIOErrorValue     `toml:"on-io-error"`
	CsumsAlg      csumsAlgValue      `toml:"csums-alg"`
	ReadBalancing readBalancingValue `toml:"read-balancing"`
	TCPCongestion congestionValue    `toml:"tcp-congestion"`
	OnCongestion  onCongestionValue  `toml:"on-congestion"`
	CongFill      sizeValue          `toml:"congestion-fill"`
	CongExtents   countValue         `toml:"congestion-extents"`
	AutoPromote   autoPromoteValue   `toml:"auto-promote"`
	BitmapBlock   sizeValue          `toml:"bitmap-block"`
	ALExtents     countValue         `toml:"al-extents"`
	Handlers      map[string]string  `toml:"handlers"`
}

// resourceTOML is a resource table: every [common] key, which it
// overrides, and its own.
type resourceTOML struct {
	commonTOML
	MetricsListen string              `toml:"metrics-listen"`
	Node          map[string]nodeTOML `toml:"node"`
}

type nodeTOML struct {
	Disk          string `toml:"disk"`
	Meta          string `toml:"meta"`
	NBD           string `toml:"nbd"`
	Address       string `toml:"address"`
	MetricsListen string `toml:"metrics-listen"`
	TLSCert       string `toml:"tls-cert"`
	TLSKey        string `toml:"tls-key"`
}

// Valid keys per level, for the hint of an unknown key error.
var (
	topKeys      = []string{"common", "handlers", "resource"}
	commonKeys   = []string{"after-sb-0pri", "after-sb-1pri", "al-extents", "auto-promote", "bitmap-block", "congestion-extents", "congestion-fill", "csums-alg", "disk-timeout", "fencing", "handlers", "ko-count", "on-congestion", "on-io-error", "on-peer-loss", "protocol", "read-balancing", "resync-rate", "secret-file", "tcp-congestion", "timeout", "tls-ca", "tls-cert", "tls-key"}
	resourceKeys = []string{"after-sb-0pri", "after-sb-1pri", "al-extents", "auto-promote", "bitmap-block", "congestion-extents", "congestion-fill", "csums-alg", "disk-timeout", "fencing", "handlers", "ko-count", "metrics-listen", "node", "on-congestion", "on-io-error", "on-peer-loss", "protocol", "read-balancing", "resync-rate", "secret-file", "tcp-congestion", "timeout", "tls-ca", "tls-cert", "tls-key"}
	nodeKeys     = []string{"address", "disk", "meta", "metrics-listen", "nbd", "tls-cert", "tls-key"}
)

// namePattern restricts resource and node names: they become file names and
// appear in the status file.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Load reads and checks the resource file at path: syntax, unknown keys,
// values, exactly two nodes per resource with all their keys, and addresses
// or endpoints used twice. It does not touch the disks or paths it names.
func Load(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Err: ErrRead, Msg: fmt.Sprintf("cannot read resource file: %v", err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Err: ErrRead, Msg: fmt.Sprintf("cannot read resource file: %v", err)}
	}
	if len(data) > MaxFileSize {
		return nil, &Error{File: path, Err: ErrRead, Msg: fmt.Sprintf("resource file is larger than %d bytes", MaxFileSize)}
	}
	return parse(path, data)
}

// Resources lists the resource names of the file, sorted.
func (f *File) Resources() []string {
	names := make([]string, 0, len(f.resources))
	for n := range f.resources {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// hostname is replaced by tests.
var hostname = os.Hostname

// Resolve returns the settings of resource as seen from node. An empty node
// means this machine: its hostname, or the hostname's first label when only
// that is configured. The returned Resource is a copy the caller owns.
func (f *File) Resolve(resource, node string) (Resource, error) {
	e, ok := f.resources[resource]
	if !ok {
		return Resource{}, &Error{File: f.path, Err: ErrNoResource,
			Msg: fmt.Sprintf("no resource %q (defined: %s); check the name or the --config file", resource, strings.Join(f.Resources(), ", "))}
	}
	names := sortedKeys(e.nodes)
	var candidates []string
	if node != "" {
		candidates = []string{node}
	} else {
		h, err := hostname()
		if err != nil {
			return Resource{}, &Error{File: f.path, Line: e.line, Err: ErrNoNode,
				Msg: fmt.Sprintf("cannot tell which node of resource %s this is (hostname: %v); pass --node NAME (one of %s)", resource, err, strings.Join(names, ", "))}
		}
		candidates = []string{h}
		if short, _, ok := strings.Cut(h, "."); ok && short != "" {
			candidates = append(candidates, short)
		}
	}
	for _, c := range candidates {
		if r, ok := e.nodes[c]; ok {
			out := *r
			out.Handlers = cloneMap(r.Handlers)
			return out, nil
		}
	}
	how := "node"
	if node == "" {
		how = "node named after this host"
	}
	return Resource{}, &Error{File: f.path, Line: e.line, Err: ErrNoNode,
		Msg: fmt.Sprintf("resource %s has no %s %q (nodes: %s); pass --node NAME", resource, how, candidates[0], strings.Join(names, ", "))}
}

// tomlLine matches the errors the TOML library formats without a
// ParseError, e.g. for a value of the wrong type.
var tomlLine = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// parse is Load without the file system; the fuzz target calls it.
func parse(path string, data []byte) (*File, error) {
	src := string(data)
	// Parse once without a schema: what fails here is syntax. Decoding into
	// the schema below can then only fail on values.
	var generic map[string]any
	if _, err := toml.Decode(src, &generic); err != nil {
		return nil, decodeError(path, err, ErrSyntax)
	}
	var raw fileTOML
	md, err := toml.Decode(src, &raw)
	if err != nil {
		return nil, decodeError(path, err, ErrBadValue)
	}
	p := &parser{path: path, ix: indexLines(src)}
	if und := md.Undecoded(); len(und) > 0 {
		k := []string(und[0])
		return nil, p.errf(ErrUnknownKey, k, "unknown key %q; valid keys here: %s", toml.Key(k).String(), strings.Join(validKeys(k), ", "))
	}
	return p.build(&raw)
}

// decodeError turns an error of the TOML library into an *Error of kind.
func decodeError(path string, err error, kind error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := pe.Message
		if kind == ErrBadValue && pe.LastKey != "" {
			msg = fmt.Sprintf("%s: %s", pe.LastKey, pe.Message)
		}
		return &Error{File: path, Line: pe.Position.Line, Err: kind, Msg: flatten(msg)}
	}
	if m := tomlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: path, Line: line, Err: kind, Msg: flatten(fmt.Sprintf("%s: %s", m[2], m[3]))}
	}
	return &Error{File: path, Err: kind, Msg: flatten(err.Error())}
}

func flatten(s string) string { return strings.Join(strings.Fields(s), " ") }

func validKeys(k []string) []string {
	switch {
	case len(k) <= 1:
		return topKeys
	case k[0] == "common":
		return commonKeys
	case k[0] == "resource" && len(k) <= 3:
		return resourceKeys
	case k[0] == "resource" && k[2] == "node":
		return nodeKeys
	}
	return topKeys
}

type parser struct {
	path string
	ix   lineIndex
}

func (p *parser) errf(kind error, key []string, format string, args ...any) *Error {
	return &Error{File: p.path, Line: p.ix.line(key...), Err: kind, Msg: flatten(fmt.Sprintf(format, args...))}
}

func (p *parser) checkHandlers(h map[string]string, key ...string) error {
	for _, ev := range sortedKeys(h) {
		if !handlers.Known(ev) {
			return p.errf(ErrUnknownKey, append(key, ev), "unknown handler event %q; events: %s", ev, strings.Join(handlers.Events, ", "))
		}
	}
	return nil
}

// abs makes a path from the file relative to the file's directory.
func (p *parser) abs(s string) string {
	if s == "" || filepath.IsAbs(s) {
		return s
	}
	return filepath.Join(filepath.Dir(p.path), s)
}

func (p *parser) build(raw *fileTOML) (*File, error) {
	if err := p.checkHandlers(raw.Handlers, "handlers"); err != nil {
		return nil, err
	}
	if err := p.checkHandlers(raw.Common.Handlers, "common", "handlers"); err != nil {
		return nil, err
	}
	if len(raw.Resource) == 0 {
		return nil, &Error{File: p.path, Err: ErrMissingKey, Msg: "no [resource.NAME] table; define at least one resource"}
	}
	f := &File{path: p.path, resources: make(map[string]*resourceEntry)}
	// Check resources in file order, so the first error is the first in the file.
	names := sortedKeys(raw.Resource)
	slices.SortStableFunc(names, func(a, b string) int {
		return p.ix.line("resource", a) - p.ix.line("resource", b)
	})
	for _, name := range names {
		e, err := p.buildResource(name, raw)
		if err != nil {
			return nil, err
		}
		f.resources[name] = e
	}
	if err := p.checkDuplicates(f, names); err != nil {
		return nil, err
	}
	return f, nil
}

func (p *parser) buildResource(name string, raw *fileTOML) (*resourceEntry, error) {
	rt := raw.Resource[name]
	rkey := []string{"resource", name}
	if !namePattern.MatchString(name) {
		return nil, p.errf(ErrBadValue, rkey, "resource name %q: use letters, digits, '.', '_' and '-' (at most 63)", name)
	}
	if err := p.checkHandlers(rt.Handlers, "resource", name, "handlers"); err != nil {
		return nil, err
	}
	nodes := sortedKeys(rt.Node)
	if len(nodes) != 2 {
		have := "no nodes"
		if len(nodes) > 0 {
			have = fmt.Sprintf("%d (%s)", len(nodes), strings.Join(nodes, ", "))
		}
		return nil, p.errf(ErrNodeCount, rkey, "resource %s has %s; define exactly two [resource.%s.node.NAME] tables", name, have, name)
	}
	c := &raw.Common
	base := Resource{
		Name:              name,
		Protocol:          first(rt.Protocol.s, c.Protocol.s, DefaultProtocol),
		ResyncRate:        firstSet(rt.ResyncRate.n, rt.ResyncRate.set, c.ResyncRate.n, c.ResyncRate.set, DefaultResyncRate),
		SecretFile:        p.abs(first(rt.SecretFile, c.SecretFile)),
		TLSCA:             p.abs(first(rt.TLSCA, c.TLSCA)),
		Timeout:           time.Duration(firstSet(int64(rt.Timeout.d), rt.Timeout.set, int64(c.Timeout.d), c.Timeout.set, int64(DefaultTimeout))),
		KoCount:           int(firstSet(rt.KoCount.n, rt.KoCount.set, c.KoCount.n, c.KoCount.set, DefaultKoCount)),
		DiskTimeout:       time.Duration(firstSet(int64(rt.DiskTimeout.d), rt.DiskTimeout.set, int64(c.DiskTimeout.d), c.DiskTimeout.set, 0)),
		OnPeerLoss:        first(rt.OnPeerLoss.s, c.OnPeerLoss.s, DefaultOnPeerLoss),
		Fencing:           first(rt.Fencing.s, c.Fencing.s, DefaultFencing),
		AfterSB0Pri:       first(rt.AfterSB0Pri.s, c.AfterSB0Pri.s, DefaultAfterSB),
		AfterSB1Pri:       first(rt.AfterSB1Pri.s, c.AfterSB1Pri.s, DefaultAfterSB),
		OnIOError:         first(rt.OnIOError.s, c.OnIOError.s, DefaultOnIOError),
		CsumsAlg:          first(rt.CsumsAlg.s, c.CsumsAlg.s, DefaultCsumsAlg),
		ReadBalancing:     first(rt.ReadBalancing.s, c.ReadBalancing.s, DefaultReadBalancing),
		TCPCongestion:     first(rt.TCPCongestion.s, c.TCPCongestion.s),
		OnCongestion:      first(rt.OnCongestion.s, c.OnCongestion.s, DefaultOnCongestion),
		CongestionFill:    firstSet(rt.CongFill.n, rt.CongFill.set, c.CongFill.n, c.CongFill.set, DefaultCongestionFill),
		CongestionExtents: int(firstSet(rt.CongExtents.n, rt.CongExtents.set, c.CongExtents.n, c.CongExtents.set, DefaultCongestionExtents)),
		AutoPromote:       first(rt.AutoPromote.s, c.AutoPromote.s, DefaultAutoPromote),
		BitmapBlock:       firstSet(rt.BitmapBlock.n, rt.BitmapBlock.set, c.BitmapBlock.n, c.BitmapBlock.set, DefaultBitmapBlock),
		ALExtents:         int(firstSet(rt.ALExtents.n, rt.ALExtents.set, c.ALExtents.n, c.ALExtents.set, DefaultALExtents)),
		Handlers:          mergeMaps(raw.Handlers, c.Handlers, rt.Handlers),
	}
	if b := base.BitmapBlock; b < MinBitmapBlock || b > MaxBitmapBlock || bits.OnesCount64(uint64(b)) != 1 {
		key := append(rkey, "bitmap-block")
		if !rt.BitmapBlock.set {
			key = []string{"common", "bitmap-block"}
		}
		return nil, p.errf(ErrBadValue, key, "bitmap-block %d: use a power of two from 512 to 64MiB, e.g. 4KiB", b)
	}
	if err := CheckALExtents(base.ALExtents); err != nil {
		key := append(rkey, "al-extents")
		if !rt.ALExtents.set {
			key = []string{"common", "al-extents"}
		}
		return nil, p.errf(ErrBadValue, key, "%s", err)
	}
	if base.CongestionExtents < 0 {
		key := append(rkey, "congestion-extents")
		if !rt.CongExtents.set {
			key = []string{"common", "congestion-extents"}
		}
		return nil, p.errf(ErrBadValue, key, "congestion-extents %d: use 0 (off) or more, e.g. %d", base.CongestionExtents, DefaultCongestionExtents)
	}
	if err := replica.CheckKoCount(base.KoCount); err != nil {
		key := append(rkey, "ko-count")
		if !rt.KoCount.set {
			key = []string{"common", "ko-count"}
		}
		return nil, p.errf(ErrBadValue, key, "%s", err)
	}
	e := &resourceEntry{line: p.ix.line(rkey...), nodes: make(map[string]*Resource, 2)}
	for i, n := range nodes {
		nt := rt.Node[n]
		nkey := []string{"resource", name, "node", n}
		if !namePattern.MatchString(n) {
			return nil, p.errf(ErrBadValue, nkey, "node name %q: use letters, digits, '.', '_' and '-' (at most 63)", n)
		}
		for _, req := range []struct{ key, val string }{
			{"disk", nt.Disk}, {"meta", nt.Meta}, {"nbd", nt.NBD}, {"address", nt.Address},
		} {
			if strings.TrimSpace(req.val) == "" {
				return nil, p.errf(ErrMissingKey, nkey, "node %s of resource %s has no %s; set it in [resource.%s.node.%s]", n, name, req.key, name, n)
			}
		}
		if err := checkHostPort(nt.Address); err != nil {
			return nil, p.errf(ErrBadValue, append(nkey, "address"), "address %q: %v", nt.Address, err)
		}
		nbd, err := p.checkNBD(nt.NBD)
		if err != nil {
			return nil, p.errf(ErrBadValue, append(nkey, "nbd"), "nbd %q: %v", nt.NBD, err)
		}
		r := base
		r.Node = n
		r.PeerNode = nodes[1-i]
		r.Disk = p.abs(nt.Disk)
		r.Meta = p.abs(nt.Meta)
		r.NBD = nbd
		r.ListenPeer = nt.Address
		r.Peer = rt.Node[nodes[1-i]].Address
		r.TLSCert = p.abs(first(nt.TLSCert, rt.TLSCert, c.TLSCert))
		r.TLSKey = p.abs(first(nt.TLSKey, rt.TLSKey, c.TLSKey))
		r.MetricsListen = first(nt.MetricsListen, rt.MetricsListen)
		if r.MetricsListen != "" {
			if err := checkHostPort(r.MetricsListen); err != nil {
				key := append(nkey, "metrics-listen")
				if nt.MetricsListen == "" {
					key = append(rkey, "metrics-listen")
				}
				return nil, p.errf(ErrBadValue, key, "metrics-listen %q: %v", r.MetricsListen, err)
			}
		}
		if set := countSet(r.TLSCert, r.TLSKey, r.TLSCA); set != 0 && set != 3 {
			return nil, p.errf(ErrMissingKey, nkey, "node %s of resource %s has only part of tls-cert, tls-key and tls-ca; set all three or none", n, name)
		}
		e.nodes[n] = &r
	}
	return e, nil
}

// checkDuplicates refuses an address used by two nodes (two daemons cannot
// listen on one address) and, per node name, a disk, metadata directory,
// NBD endpoint or metrics address used by two resources.
func (p *parser) checkDuplicates(f *File, order []string) error {
	seen := map[string][]string{} // "kind\x00value" -> key of first use
	for _, name := range order {
		e := f.resources[name]
		for _, n := range sortedKeys(e.nodes) {
			r := e.nodes[n]
			nkey := []string{"resource", name, "node", n}
			for _, u := range []struct{ kind, value, scope string }{
				{"address", r.ListenPeer, ""},
				{"disk", r.Disk, n},
				{"meta", r.Meta, n},
				{"nbd", r.NBD, n},
				{"metrics-listen", r.MetricsListen, n},
			} {
				if u.value == "" {
					continue
				}
				id := u.kind + "\x00" + u.scope + "\x00" + u.value
				key := append(slices.Clone(nkey), u.kind)
				if prev, ok := seen[id]; ok {
					return p.errf(ErrDuplicate, key, "%s %q is also used by node %s of resource %s (line %d); give each its own",
						u.kind, u.value, prev[3], prev[1], p.ix.line(prev...))
				}
				seen[id] = key
			}
		}
	}
	return nil
}

// checkNBD accepts "unix:PATH" and "tcp:HOST:PORT" and returns the endpoint
// with a relative unix path made absolute.
func (p *parser) checkNBD(s string) (string, error) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		path := strings.TrimPrefix(s, "unix:")
		if path == "" {
			return "", errors.New("empty socket path; use unix:/run/urbd/NAME.nbd")
		}
		return "unix:" + p.abs(path), nil
	case strings.HasPrefix(s, "tcp:"):
		if err := checkHostPort(strings.TrimPrefix(s, "tcp:")); err != nil {
			return "", err
		}
		return s, nil
	}
	return "", errors.New("use unix:PATH or tcp:HOST:PORT")
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("use HOST:PORT, e.g. 10.0.0.1:7789 or [fd00::1]:7789")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return errors.New("port must be a number from 1 to 65535")
	}
	return nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func firstSet(a int64, aSet bool, b int64, bSet bool, def int64) int64 {
	switch {
	case aSet:
		return a
	case bSet:
		return b
	}
	return def
}

func countSet(vals ...string) int {
	n := 0
	for _, v := range vals {
		if v != "" {
			n++
		}
	}
	return n
}

func mergeMaps(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
