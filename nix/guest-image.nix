# The guest image of the Incus runtime: a static busybox userland, busybox init as PID 1,
# and the guest view's mount points. Everything a lane runs comes from the payloads and
# the host's /nix/store, which the runtime mounts read-only, so the image stays tiny.
#
# Output: $out/pikaci-guest-image.tar.xz, a unified image tarball (metadata.yaml + rootfs/)
# for `pikaci image import --from` (or `incus image import`).
{
  runCommand,
  busybox,
  system,
  release ? "1",
}:
let
  architectures = {
    x86_64-linux = "x86_64";
    aarch64-linux = "aarch64";
  };
  architecture = architectures.${system} or (throw "pikaci guest image: unsupported system `${system}`");
in
runCommand "pikaci-guest-image" { inherit architecture release; } ''
  set -eu
  # Fixed times and owners, so that the same inputs give the same tarball.
  epoch=''${SOURCE_DATE_EPOCH:-315532800}
  image=$PWD/image
  root=$image/rootfs
  for dir in bin sbin etc root tmp run var var/tmp proc sys dev mnt usr/bin usr/sbin \
      workspace pikaci/payloads pikaci/artifacts nix/store; do
    mkdir -p "$root/$dir"
  done
  chmod 1777 "$root/tmp" "$root/var/tmp"
  chmod 0700 "$root/root"

  cp ${busybox}/bin/busybox "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list-full); do
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done

  # PID 1 does nothing but reap; the runtime runs every command through `incus exec`.
  printf '%s\n' '::sysinit:/bin/mkdir -p /run /tmp' '::respawn:/bin/sleep 2147483647' > "$root/etc/inittab"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' > "$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' > "$root/etc/group"
  printf '%s\n' '127.0.0.1 localhost' '::1 localhost' > "$root/etc/hosts"
  echo pikaci-guest > "$root/etc/hostname"

  cat > "$image/metadata.yaml" <<METADATA
  architecture: $architecture
  creation_date: $epoch
  properties:
    description: pikaci guest (busybox)
    os: pikaci
    release: "$release"
  METADATA

  mkdir -p "$out"
  tar -C "$image" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -cf - metadata.yaml rootfs | xz -T1 -6 > "$out/pikaci-guest-image.tar.xz"
''
