// Package deps pins the project's dependencies while packages that use them are written.
package deps

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/google/renameio/v2"
	_ "github.com/hashicorp/yamux"
	_ "github.com/pojntfx/go-nbd/pkg/protocol"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/urfave/cli/v2"
	_ "github.com/vishvananda/netlink"
	_ "github.com/vishvananda/netlink/nl"
	_ "github.com/vishvananda/netns"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/time/rate"
)
