# NixOS module `services.pikaci`: a host that runs pikaci lanes, for its own users and,
# with `runner.enable`, for other machines over SSH (`pikaci run --remote HOST`).
# The options are documented in docs/nixos.md.
#
# `packages` is the flake's `packages` output, for the defaults of `package` and
# `image.package`.
{ packages }:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkMerge
    mkDefault
    types
    literalExpression
    ;

  cfg = config.services.pikaci;
  system = pkgs.stdenv.hostPlatform.system;
  fromFlake =
    name:
    packages.${system}.${name}
      or (throw "services.pikaci: the pikaci flake has no package `${name}` for ${system}; set the option yourself");

  pikaci = "${cfg.package}/bin/pikaci";
  incus = config.virtualisation.incus.package;
  # Who owns the state directories and runs the timers.
  owner = if cfg.runner.enable then cfg.runner.user else "root";

  # Paths whose contents do not survive a reboot: a GC root link there would vanish while
  # its run still needs the payload.
  volatile = [
    "/tmp/"
    "/run/"
    "/dev/shm/"
  ];
  isPersistent = dir: lib.hasPrefix "/" dir && !(builtins.any (p: lib.hasPrefix p "${dir}/") volatile);
in
{
  options.services.pikaci = {
    enable = mkEnableOption "pikaci, local-first CI for Rust workspaces on Nix";

    package = mkOption {
      type = types.package;
      default = fromFlake "pikaci";
      defaultText = literalExpression "pikaci.packages.\${system}.pikaci";
      description = "The pikaci package. It is installed system-wide.";
    };

    group = mkOption {
      type = types.str;
      default = "pikaci";
      description = "The group that owns the state directories; its members can read runs and logs.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/pikaci";
      description = ''
        The host's state root (runs, logs, snapshots, and the GC roots of live runs'
        payloads), for runs started on this host with `--state-root` or
        `PIKACI_STATE_ROOT`, and the one the periodic `pikaci gc` cleans. It must persist
        across reboots.
      '';
    };

    incus = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Enable Incus, with a storage pool and a profile for pikaci's instances.";
      };
      storagePool = {
        name = mkOption {
          type = types.str;
          default = "pikaci";
          description = "The storage pool that holds the instances' root disks.";
        };
        driver = mkOption {
          type = types.str;
          default = "dir";
          description = "The pool's driver (`dir`, `btrfs`, `zfs`, `lvm`).";
        };
        config = mkOption {
          type = types.attrsOf types.str;
          default = { };
          example = {
            size = "100GiB";
          };
          description = "The pool's Incus configuration keys.";
        };
      };
      # No `name`: pikaci launches its instances with Incus' `default` profile and passes no
      # `--profile`, so a profile of another name would leave them without a root disk.
      profile = {
        config = mkOption {
          type = types.attrsOf types.str;
          default = { };
          example = {
            "limits.cpu" = "4";
            "limits.memory" = "8GiB";
          };
          description = "The profile's Incus configuration keys (limits, security).";
        };
        devices = mkOption {
          type = types.attrsOf (types.attrsOf types.str);
          default = { };
          example = {
            eth0 = {
              type = "nic";
              network = "incusbr0";
              name = "eth0";
            };
          };
          description = "More devices of the profile, besides its root disk (lanes need no network).";
        };
      };
    };

    image = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Import the guest image into Incus: at boot, and at activation whenever the image
          changes (a systemd unit, `pikaci-image-import.service`). Needs `incus.enable`.
        '';
      };
      package = mkOption {
        type = types.package;
        default = fromFlake "guest-image";
        defaultText = literalExpression "pikaci.packages.\${system}.guest-image";
        description = "The image: a package with `pikaci-guest-image.tar.xz` at its root.";
      };
      alias = mkOption {
        type = types.str;
        default = "pikaci/busybox";
        description = "The image's alias; pikaci uses `pikaci/busybox` for lanes that name no image.";
      };
    };

    runner = {
      enable = mkEnableOption "a runner user that other machines reach over SSH to run lanes on this host";
      user = mkOption {
        type = types.str;
        default = "pikaci";
        description = "The runner's user name (`pikaci run --remote <user>@<host>`).";
      };
      authorizedKeys = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... ci@orchestrator" ];
        description = "SSH public keys allowed to log in as the runner.";
      };
      stateDir = mkOption {
        type = types.str;
        default = "/var/tmp/pikaci";
        description = ''
          Where remote runs keep their job directories (and the GC roots of their
          payloads) on this host. It must equal the orchestrators' `PIKACI_REMOTE_STATE_ROOT`
          (pikaci's default is `/var/tmp/pikaci`).
        '';
      };
      cleanAfter = mkOption {
        type = types.str;
        default = "7d";
        description = ''
          Age after which systemd-tmpfiles removes remote job directories (their GC roots
          with them). Keep it far above the longest lane timeout.
        '';
      };
    };

    gc = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run `pikaci gc` on `stateDir` periodically (a systemd timer).";
      };
      dates = mkOption {
        type = types.str;
        default = "daily";
        description = "When, as a systemd calendar expression.";
      };
      keep = mkOption {
        type = types.int;
        default = 20;
        description = "How many of the newest runs to keep.";
      };
    };

    web = {
      enable = mkEnableOption "`pikaci serve`, the read-only web page of the runs in `stateDir` (docs/web.md)";
      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:8080";
        description = ''
          Where the page listens (`ADDR:PORT`). It has no authentication: keep it on
          loopback and put a reverse proxy with authentication in front of it.
        '';
      };
    };

    nixGc = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Also enable Nix's periodic garbage collection (`nix.gc`), run right after
          `pikaci gc` so that the payloads of the runs it released are collected. The
          payloads of live runs are GC roots and stay.
        '';
      };
      dates = mkOption {
        type = types.str;
        default = "weekly";
        description = "When, as a systemd calendar expression.";
      };
      options = mkOption {
        type = types.str;
        default = "--delete-older-than 14d";
        description = "Options for `nix-collect-garbage`.";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = isPersistent cfg.stateDir;
          message = "services.pikaci.stateDir must be an absolute path that survives a reboot (not under /tmp, /run or /dev/shm): it holds the GC roots of live runs.";
        }
        {
          assertion = cfg.image.enable -> cfg.incus.enable;
          message = "services.pikaci.image.enable needs services.pikaci.incus.enable: the image is imported into Incus.";
        }
        {
          assertion = cfg.runner.enable -> isPersistent cfg.runner.stateDir;
          message = "services.pikaci.runner.stateDir must be an absolute path that survives a reboot (not under /tmp, /run or /dev/shm).";
        }
        {
          assertion = cfg.runner.enable -> cfg.runner.stateDir != cfg.stateDir;
          message = "services.pikaci.runner.stateDir must differ from services.pikaci.stateDir: remote job directories expire, runs there do not.";
        }
      ];
      warnings = lib.optional (
        cfg.runner.enable && cfg.runner.authorizedKeys == [ ]
      ) "services.pikaci.runner is enabled without authorizedKeys: no orchestrator can log in as `${cfg.runner.user}` unless keys come from elsewhere.";

      environment.systemPackages = [ cfg.package ];
      # pikaci reads lanes with `nix eval` on flakes. `extra-experimental-features`, so
      # that a host's own `experimental-features`, in its list or its string form, stays
      # its own (the two forms of one setting do not merge).
      nix.settings.extra-experimental-features = [
        "nix-command"
        "flakes"
      ];
      users.groups.${cfg.group} = { };
      # No age: only `pikaci gc` removes runs, so a live run's GC roots stay.
      systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0750 ${owner} ${cfg.group} - -" ];
    }

    (mkIf cfg.incus.enable {
      virtualisation.incus.enable = true;
      # NixOS supports Incus only with the nftables firewall backend.
      networking.nftables.enable = mkDefault true;
      virtualisation.incus.preseed = {
        storage_pools = [
          {
            inherit (cfg.incus.storagePool) name driver config;
          }
        ];
        # Incus' `default` profile, which pikaci's instances use: at default priority, so
        # that a host preseeding its own profiles keeps them (one `default`, its own, which
        # then needs a root disk; docs/nixos.md).
        profiles = mkDefault [
          {
            name = "default";
            inherit (cfg.incus.profile) config;
            description = "pikaci lane instances";
            devices = cfg.incus.profile.devices // {
              root = {
                path = "/";
                pool = cfg.incus.storagePool.name;
                type = "disk";
              };
            };
          }
        ];
      };
    })

    (mkIf (cfg.incus.enable && cfg.image.enable) {
      # The image's store path is part of the unit, so a new image changes the unit and
      # activation restarts it: the image is re-imported exactly when it changed.
      systemd.services.pikaci-image-import = {
        description = "Import the pikaci guest image into Incus";
        wantedBy = [ "multi-user.target" ];
        requires = [ "incus.service" ];
        after = [
          "incus.service"
          "incus-preseed.service"
        ];
        path = [ incus ];
        environment.PIKACI_STATE_ROOT = cfg.stateDir;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = lib.escapeShellArgs [
            pikaci
            "image"
            "import"
            "--force"
            "--alias"
            cfg.image.alias
            "--from"
            "${cfg.image.package}/pikaci-guest-image.tar.xz"
          ];
        };
      };
    })

    (mkIf cfg.runner.enable {
      users.users.${cfg.runner.user} = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.stateDir;
        # A login shell: orchestrators run commands over SSH.
        shell = pkgs.bashInteractive;
        extraGroups = lib.optional cfg.incus.enable "incus-admin";
        openssh.authorizedKeys.keys = cfg.runner.authorizedKeys;
      };
      services.openssh.enable = mkDefault true;
      # A run over several hosts builds each payload on one host and copies the outputs
      # to the others (`nix copy --to ssh://runner@host`): Nix imports unsigned built
      # paths only from trusted users.
      nix.settings.trusted-users = [ cfg.runner.user ];
      systemd.tmpfiles.rules = [
        "d ${cfg.runner.stateDir} 0750 ${cfg.runner.user} ${cfg.group} ${cfg.runner.cleanAfter} -"
      ];
    })

    (mkIf cfg.gc.enable {
      systemd.services.pikaci-gc = {
        description = "Remove old pikaci runs, their GC roots, snapshots and orphaned instances";
        after = lib.optional cfg.incus.enable "incus.service";
        path = lib.optional cfg.incus.enable incus;
        environment.PIKACI_STATE_ROOT = cfg.stateDir;
        serviceConfig = {
          Type = "oneshot";
          User = owner;
          Group = cfg.group;
          ExecStart = lib.escapeShellArgs [
            pikaci
            "gc"
            "--keep"
            (toString cfg.gc.keep)
          ];
        };
      };
      systemd.timers.pikaci-gc = {
        description = "Periodic pikaci gc";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.gc.dates;
          Persistent = true;
        };
      };
    })

    (mkIf cfg.web.enable {
      # Read-only by construction: the whole file system is read-only for the service.
      systemd.services.pikaci-web = {
        description = "pikaci web page of runs (read-only)";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        environment.PIKACI_STATE_ROOT = cfg.stateDir;
        serviceConfig = {
          User = owner;
          Group = cfg.group;
          ExecStart = lib.escapeShellArgs [
            pikaci
            "serve"
            "--listen"
            cfg.web.listen
          ];
          Restart = "on-failure";
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          NoNewPrivileges = true;
          CapabilityBoundingSet = "";
          RestrictAddressFamilies = "AF_INET AF_INET6 AF_UNIX";
        };
      };
    })

    (mkIf cfg.nixGc.enable {
      # A host's own `nix.gc.dates`/`options` win over these.
      nix.gc = {
        automatic = true;
        dates = mkDefault cfg.nixGc.dates;
        options = mkDefault cfg.nixGc.options;
      };
      # Release old runs first; live runs' payloads are GC roots either way.
      systemd.services.nix-gc = mkIf cfg.gc.enable {
        wants = [ "pikaci-gc.service" ];
        after = [ "pikaci-gc.service" ];
      };
    })
  ]);
}
