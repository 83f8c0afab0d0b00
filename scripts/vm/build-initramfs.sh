#!/bin/sh
# build-initramfs.sh OUT.cpio.gz [KERNEL_VERSION]
#
# Builds the busybox initramfs of urbd's kernel test tier: busybox-static,
# the virtio and 9p modules of the installed Debian kernel (in dependency
# order, read from modules.dep, decompressed if needed) and scripts/vm/init.
# The guest mounts the host's root over 9p and runs everything from there,
# so the image stays a few MiB. Nothing it builds is committed.
set -eu

out=${1:?usage: build-initramfs.sh OUT.cpio.gz [KERNEL_VERSION]}
kver=${2:-$(ls /lib/modules | sort -V | tail -n 1)}
moddir=/lib/modules/$kver
here=$(cd "$(dirname "$0")" && pwd)

[ -f "$moddir/modules.dep" ] || { echo "build-initramfs: no $moddir/modules.dep: install linux-image-amd64" >&2; exit 1; }
busybox=$(command -v busybox) || { echo "build-initramfs: busybox not found: install busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/lib/modules" "$work/proc" "$work/sys" "$work/dev" "$work/host" "$work/tmp"
cp "$busybox" "$work/bin/busybox"
cp "$here/init" "$work/init"
chmod 755 "$work/init" "$work/bin/busybox"

# Wanted modules, leaves last; each is preceded by its dependencies.
wanted="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p"
order=""
add() { # add MODPATH: append MODPATH after its dependencies, once
	case " $order " in *" $1 "*) return ;; esac
	deps=$(awk -v m="$1:" '$1 == m { $1 = ""; print; exit }' "$moddir/modules.dep")
	for d in $deps; do add "$d"; done
	order="$order $1"
}
for m in $wanted; do
	path=$(awk -v m="$m" '{ p = $1; sub(":$", "", p); n = p; sub(".*/", "", n); sub("\\.ko.*$", "", n); gsub("-", "_", n); if (n == m) { print p; exit } }' "$moddir/modules.dep")
	if [ -z "$path" ]; then
		# Built into the kernel: nothing to load.
		grep -q "/$m.ko" "$moddir/modules.builtin" 2>/dev/null || echo "build-initramfs: module $m not found for $kver" >&2
		continue
	fi
	add "$path"
done
: > "$work/modules.order"
for p in $order; do
	name=$(basename "$p")
	case "$name" in
	*.ko.xz) xz -dc "$moddir/$p" > "$work/lib/modules/${name%.xz}"; name=${name%.xz} ;;
	*.ko.zst) zstd -qdc "$moddir/$p" > "$work/lib/modules/${name%.zst}"; name=${name%.zst} ;;
	*.ko.gz) gzip -dc "$moddir/$p" > "$work/lib/modules/${name%.gz}"; name=${name%.gz} ;;
	*) cp "$moddir/$p" "$work/lib/modules/$name" ;;
	esac
	echo "$name" >> "$work/modules.order"
done

(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
