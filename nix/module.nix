# NixOS module: `services.kestrel` runs the Kestrel agent (`kestrel run`) as the
# unprivileged `kestrel` user holding only the capabilities it needs.
#
# Every hardening choice below says why; the ones that look like omissions
# (ProtectKernelTunables, ProtectKernelLogs, ProtectProc, PrivateUsers) are
# deliberate: each would silently take away something Kestrel needs.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.kestrel;

  settingsFormat = pkgs.formats.toml { };

  # The repository's config.toml documents every key with its built-in default;
  # the typed options below take their defaults from it so the two cannot drift.
  documented = lib.importTOML ../config.toml;

  # CacheDirectory=kestrel below; the symbol store's disk tier lives here.
  cacheDirectory = "/var/cache/kestrel";
  stateDirectory = "/var/lib/kestrel";

  # Exactly what `kestrel check` reports as required, and what a non-root
  # `kestrel record` and `kestrel run` were seen to need (nix/check-hardening.sh;
  # the agent drops CAP_BPF itself once its programs are loaded):
  #   CAP_BPF         create maps, load programs (instead of CAP_SYS_ADMIN)
  #   CAP_PERFMON     perf_event_open on every CPU, tracing program types
  #   CAP_SYS_PTRACE  read other users' /proc/PID/{maps,root} to symbolize them
  #   CAP_SYSLOG      real addresses in /proc/kallsyms (kernel frame names)
  # Not CAP_SYS_RESOURCE: since Linux 5.11 BPF memory is charged to the memory
  # cgroup, not RLIMIT_MEMLOCK (LimitMEMLOCK below covers older kernels).
  # Not CAP_SYS_ADMIN: /proc/PID/map_files (deleted or replaced binaries) is
  # the only thing it would add; Kestrel falls back to the mapped path.
  # CAP_DAC_READ_SEARCH only with `readAnyFile`: CAP_SYS_PTRACE opens another
  # user's /proc/PID/root, but the files below it are still subject to their
  # permissions (a binary under a 0700 /root is not symbolized without it;
  # nix/check-hardening.sh shows both).
  capabilities = [
    "CAP_BPF"
    "CAP_PERFMON"
    "CAP_SYS_PTRACE"
    "CAP_SYSLOG"
  ]
  ++ lib.optional cfg.readAnyFile "CAP_DAC_READ_SEARCH";

  configFile = settingsFormat.generate "kestrel.toml" cfg.settings;

  # Directories Kestrel writes besides its cache: exporters that write files
  # (`pprof_dir`, `folded_dir`) name theirs with `dir`.
  exporterDirectories = lib.filter (dir: dir != null) (
    map (exporter: exporter.dir or null) cfg.settings.exporters
  );
  writableDirectories = lib.unique (
    lib.optional (cfg.settings.symbols.cache_dir != cacheDirectory) cfg.settings.symbols.cache_dir
    ++ lib.filter (dir: !(lib.hasPrefix "${stateDirectory}/" dir || dir == stateDirectory)) (
      map toString exporterDirectories
    )
  );

  # A float option that also accepts a Nix integer (`probability = 1;`). The
  # file may still say `1` (the TOML is generated through JSON, and some Nix
  # versions print 1.0 as 1); Kestrel reads integers for its float keys.
  floatBetween =
    low: high:
    types.coercedTo types.int (value: value * 1.0) (
      types.addCheck types.float (value: value >= low && value <= high)
      // {
        description = "floating point number between ${toString low} and ${toString high} (both inclusive)";
      }
    );
in
{
  options.services.kestrel = {
    enable = lib.mkEnableOption "Kestrel, the continuous eBPF profiler (`kestrel run`)";

    package = lib.mkPackageOption pkgs "kestrel" { };

    settings = mkOption {
      description = ''
        Kestrel's configuration, rendered to TOML and passed with `--config`.
        Every key and its default is documented in the repository's
        `config.toml`; keys not declared here are passed through unchecked
        (Kestrel itself rejects unknown keys and out-of-range values at start).
      '';
      default = { };
      example = lib.literalExpression ''
        {
          sampling.frequency_hz = 49;
          off_cpu.probability = 0.1;
          exporters = [
            {
              kind = "otlp";
              endpoint = "https://collector.example.com:4317";
              headers.authorization = "Bearer ...";
            }
          ];
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;

        options = {
          sampling.frequency_hz = mkOption {
            type = types.ints.between 1 10000;
            default = documented.sampling.frequency_hz;
            description = "On-CPU samples per second on every online CPU.";
          };

          off_cpu.probability = mkOption {
            type = floatBetween 0 1;
            default = documented.off_cpu.probability;
            example = 0.1;
            description = ''
              Fraction of voluntary context switches whose wait is measured.
              0 disables off-CPU profiling and its BPF maps are not created.
            '';
          };

          memory.bpf_cap_bytes = mkOption {
            type = types.addCheck types.ints.unsigned (bytes: bytes >= 1048576) // {
              description = "integer of at least 1048576 (1 MiB)";
            };
            default = documented.memory.bpf_cap_bytes;
            description = ''
              Cap on the kernel memory of all of Kestrel's BPF maps together, in
              bytes. `kestrel plan` shows how the plan fits under it.
            '';
          };

          symbols.cache_dir = mkOption {
            type = types.str;
            default = cacheDirectory;
            description = ''
              Directory of the symbol store's disk tier. The default is the
              service's CacheDirectory; another directory is created by
              systemd-tmpfiles and made writable in the sandbox.
            '';
          };

          exporters = mkOption {
            type = types.listOf (
              types.submodule {
                freeformType = settingsFormat.type;
                options.kind = mkOption {
                  type = types.str;
                  example = "otlp";
                  description = "The exporter: `otlp`, `pprof_dir` or `folded_dir`.";
                };
              }
            );
            # `kestrel run` refuses to start without an exporter; by default
            # the reports go to a rotating directory in the StateDirectory.
            default = [
              {
                kind = "pprof_dir";
                dir = "${stateDirectory}/pprof";
              }
            ];
            defaultText = lib.literalExpression ''[ { kind = "pprof_dir"; dir = "${stateDirectory}/pprof"; } ]'';
            example = lib.literalExpression ''
              [
                { kind = "otlp"; endpoint = "https://collector.example.com:4317"; }
                { kind = "pprof_dir"; dir = "/var/lib/kestrel/pprof"; }
              ]
            '';
            description = ''
              The exporters `kestrel run` sends each report to, one
              `[[exporters]]` table each with its `kind` and that exporter's
              keys (see config.toml). Setting it replaces the default. A `dir`
              outside /var/lib/kestrel (the StateDirectory) is created and made
              writable in the sandbox.
            '';
          };
        };
      };
    };

    readAnyFile = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Also grant CAP_DAC_READ_SEARCH, so that programs whose files the
        `kestrel` user cannot read (in 0700 home directories, /root, or with
        mode 0700 themselves) are symbolized too; without it their frames show
        as `[binary]+offset`. Binaries in /nix/store are readable either way.
        Off by default: it lets the agent read every file on the host.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--log-level"
        "debug"
      ];
      description = "Extra command-line arguments appended to `kestrel run --config <file>`.";
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      description = ''
        The generated configuration file (read-only), to run other commands
        with the agent's configuration, e.g. `kestrel plan --config <file>`.
      '';
    };

    memoryMax = mkOption {
      type = types.nullOr types.str;
      default = "1G";
      description = ''
        systemd MemoryMax= of the service: a safety net, not a budget. It counts
        Kestrel's BPF maps (charged to the service's memory cgroup), its symbol
        store's memory tier and the symbolizer's parsed files. A `kestrel record`
        of an idle 2-CPU host peaked at about 60 MB resident. `null` removes it.
      '';
    };
  };

  config = lib.mkMerge [
    { services.kestrel.configFile = configFile; }

    (lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = cfg.settings.exporters != [ ];
          message = "services.kestrel.settings.exporters is empty: `kestrel run` needs at least one exporter to send its reports to.";
        }
      ];

      users.users.kestrel = {
        isSystemUser = true;
        group = "kestrel";
        description = "Kestrel profiler";
      };
      users.groups.kestrel = { };

      # ReadWritePaths= needs the directories to exist before the namespace is
      # set up; Kestrel itself would create them too late.
      systemd.tmpfiles.settings."10-kestrel" = lib.genAttrs writableDirectories (_dir: {
        d = {
          user = "kestrel";
          group = "kestrel";
          mode = "0750";
        };
      });

      systemd.services.kestrel = {
        description = "Kestrel continuous eBPF profiler";
        wantedBy = [ "multi-user.target" ];
        # Exporters dial out and retry on their own, so network.target (not
        # network-online.target) is enough; profiling starts without waiting.
        after = [ "network.target" ];

        environment = {
          # Logs go to the journal: no ANSI colour codes.
          NO_COLOR = "1";
        };

        serviceConfig = {
          Type = "exec";
          ExecStart = utils.escapeSystemdExecArgs (
            [
              (lib.getExe cfg.package)
              "run"
              "--config"
              configFile
            ]
            ++ cfg.extraArgs
          );
          Restart = "on-failure";
          RestartSec = "10s";
          # On SIGTERM the agent flushes a last report within its own deadline.
          TimeoutStopSec = "30s";

          # A dedicated user rather than DynamicUser=: exporter directories keep
          # a stable owner and group that readers can be added to.
          User = "kestrel";
          Group = "kestrel";

          # Only the capabilities listed above, raised as ambient capabilities
          # for the non-root user and bounding everything else away.
          AmbientCapabilities = capabilities;
          CapabilityBoundingSet = capabilities;
          # Ambient capabilities survive NoNewPrivileges (it only stops gaining
          # privileges through setuid bits and file capabilities on exec).
          NoNewPrivileges = true;

          CacheDirectory = "kestrel";
          CacheDirectoryMode = "0700";
          StateDirectory = "kestrel";
          StateDirectoryMode = "0750";
          # The symbol store and exporter files are private to the agent's user.
          UMask = "0077";

          # Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. systemd sets the
          # limit before dropping privileges, so no CAP_SYS_RESOURCE is needed;
          # newer kernels ignore it for BPF. Headroom covers the page-rounded
          # estimates older kernels use.
          LimitMEMLOCK = toString (cfg.settings.memory.bpf_cap_bytes + 8388608);
          MemoryMax = lib.mkIf (cfg.memoryMax != null) cfg.memoryMax;

          # File system: everything read-only except the directories above.
          # Symbolization opens other processes' files through /proc/PID/root,
          # which resolves in *their* mount namespace, so hiding /home, /root and
          # /tmp from the agent's own view does not hide their binaries or their
          # /tmp/perf-PID.map files (checked by nix/check-hardening.sh).
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          ReadWritePaths = writableDirectories;
          PrivateDevices = true;
        # Kestrel mounts nothing; its mount namespace stays its own.
        PrivateMounts = true;

          # NOT ProtectKernelTunables=: besides making /proc/sys and /sys
          # read-only it makes /proc/kallsyms inaccessible, and every kernel frame
          # would lose its name. Its read-only part is restated explicitly.
          ProtectKernelTunables = false;
          ReadOnlyPaths = [
            "/proc/sys"
            "/sys"
            "-/proc/sysrq-trigger"
            "-/proc/latency_stats"
            "-/proc/acpi"
            "-/proc/timer_stats"
            "-/proc/fs"
            "-/proc/irq"
          ];
          # NOT ProtectKernelLogs=: it removes CAP_SYSLOG from the bounding set,
          # which /proc/kallsyms needs. Its file part is restated explicitly, and
          # syslog(2) is outside the system call filter below anyway.
          ProtectKernelLogs = false;
          InaccessiblePaths = [
            "-/proc/kcore"
            "-/proc/kmsg"
            "-/dev/kmsg"
          ];
          ProtectKernelModules = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          # NOT ProtectProc=invisible / ProcSubset=pid: Kestrel reads every
          # process's /proc/PID/{maps,root,cgroup,comm}, /proc/kallsyms and
          # /proc/sys/kernel/pid_max.
          ProtectProc = "default";
          ProcSubset = "all";
          # NOT PrivateUsers=: capabilities inside a user namespace do not allow
          # bpf() or perf_event_open() on the host.
          PrivateUsers = false;

          # Network: exporters dial collectors over TCP (OTLP gRPC); AF_UNIX for
          # the journal and name service. No netlink: glibc's address sorting
          # falls back when the kernel refuses the socket.
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_INET"
            "AF_INET6"
          ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RemoveIPC = true;
          LockPersonality = true;
          # Kestrel has no JIT of its own (BPF is JIT-compiled by the kernel).
          MemoryDenyWriteExecute = true;

          # System calls: a usual service plus the two Kestrel exists for.
          # bpf(2) is in @privileged and perf_event_open(2) in @debug; neither
          # group is allowed whole.
          SystemCallArchitectures = "native";
          SystemCallFilter = [
            "@system-service"
            "bpf"
            "perf_event_open"
          ];
          SystemCallErrorNumber = "EPERM";
        };
      };
    })
  ];
}
