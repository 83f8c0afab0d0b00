// Package config reads urbd's resource files (`urbd up NAME --config FILE`):
// one TOML file, copied unchanged to both nodes, that names both nodes of
// each resource the way drbd.conf does. docs/CONFIG.md describes the format.
//
// Load parses and checks the whole file; Resolve picks one resource and one
// node and returns flat settings with defaults filled in. Every error is an
// *Error of one line, "FILE:LINE: what is wrong and what to do", that wraps
// one of the package's sentinels (ErrSyntax, ErrUnknownKey, ErrBadValue,
// ErrMissingKey, ErrNoResource, ErrNoNode, ErrNodeCount, ErrDuplicate,
// ErrRead) for errors.Is.
//
// Precedence, lowest first: built-in defaults, [common], [resource.NAME],
// [resource.NAME.node.NODE]. Handlers: [handlers], then [common.handlers],
// then [resource.NAME.handlers], merged per event. Relative paths are taken
// relative to the directory of the file, so the result does not depend on
// the daemon's working directory.
//
// A File is immutable after Load and safe for concurrent use.
package config
