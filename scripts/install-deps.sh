#!/usr/bin/env bash
# Installs every Debian 12 package that urbd's demo, tests and benchmarks need.
# Idempotent and quiet when everything is already present.
set -euo pipefail

packages=(
	libnbd-bin      # nbdinfo, nbdcopy, nbdfuse: real NBD clients
	nbdkit          # reference NBD server for interop and benchmarks
	qemu-utils      # qemu-io, qemu-img, qemu-nbd
	fio             # load generator with the nbd engine
	e2fsprogs       # mkfs.ext4, e2fsck
	fuse3           # fusermount3 for nbdfuse
	iproute2        # ip netns, veth for the two-host tests
	kmod            # modprobe
	util-linux      # losetup, mount
	qemu-system-x86 # the VM that runs a real kernel with /dev/nbd0
	linux-image-amd64 # Debian's kernel with nbd.ko and dm-mod.ko
	busybox-static  # the VM's initramfs
	lvm2            # LVM on /dev/nbd0 inside the VM
	cpio            # packs the initramfs
	make
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: need root to install: ${missing[*]}" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
