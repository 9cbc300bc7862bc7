# Evaluates nix/module.nix with nixpkgs' `lib` alone, without nixpkgs' packages
# or NixOS: the NixOS options the module sets are declared here as stubs typed
# like NixOS's own, so a misspelt option, a value of the wrong type or a broken
# default fails here. It is the module check that runs where nixpkgs cannot be
# fetched; `nix flake check` with nixpkgs evaluates the real thing.
#
#   nix-instantiate --eval --strict --json nix/eval-module.nix \
#     --arg lib 'import /path/to/nixpkgs/lib'
#
# (any nixpkgs checkout's lib/, or github:nix-community/nixpkgs.lib). The result
# is JSON: for each scenario the rendered config.toml, the systemd unit as NixOS
# would write it, the users and tmpfiles rules; and for each misuse whether the
# evaluation failed as it must. nix/check-offline.sh runs this and checks the
# result against the kestrel binary and systemd-analyze.
{
  lib,
  # true: the stubs and the evaluator, for nix/eval-flake.nix (not JSON).
  internals ? false,
}:
let
  inherit (lib) mkOption types;

  # --- stubs of what NixOS and nixpkgs provide ---------------------------------

  # pkgs.formats.toml: the same value type as nixpkgs (TOML has no null); the
  # file is rendered here instead of by remarshal's json2toml, from the same
  # JSON the real generator receives, so the data is identical.
  tomlFormat = {
    type =
      let
        valueType =
          types.oneOf [
            types.bool
            types.int
            types.float
            types.str
            types.path
            (types.attrsOf valueType)
            (types.listOf valueType)
          ]
          // {
            description = "TOML value";
          };
      in
      valueType;
    generate = name: value: {
      # Coerces to a store-like path in ExecStart, like the real derivation.
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      inherit name value;
      text = toTOML value;
    };
  };

  toTOML =
    let
      key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
      # JSON scalars are valid TOML scalars (same string escapes, same numbers).
      value =
        v:
        if lib.isAttrs v then
          "{ " + lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${key k} = ${value x}") v) + " }"
        else if lib.isList v then
          "[" + lib.concatMapStringsSep ", " value v + "]"
        else if lib.isPath v then
          builtins.toJSON (toString v)
        else
          builtins.toJSON v;
      table =
        path: attrs:
        let
          scalars = lib.filterAttrs (_: v: !lib.isAttrs v) attrs;
          tables = lib.filterAttrs (_: lib.isAttrs) attrs;
          header = lib.optionalString (path != [ ]) "[${lib.concatMapStringsSep "." key path}]\n";
          body = lib.concatStrings (lib.mapAttrsToList (k: v: "${key k} = ${value v}\n") scalars);
        in
        lib.optionalString (path == [ ] || scalars != { }) (header + body + "\n")
        + lib.concatStrings (lib.mapAttrsToList (k: v: table (path ++ [ k ]) v) tables);
    in
    table [ ];

  kestrelPackage = {
    type = "derivation";
    name = "kestrel-0.1.0";
    outPath = "/nix/store/11111111111111111111111111111111-kestrel-0.1.0";
    meta.mainProgram = "kestrel";
  };

  stubPkgs = {
    formats.toml = { }: tomlFormat;
    kestrel = kestrelPackage;
  };

  # nixos/lib/utils.nix's escaping of ExecStart= arguments.
  stubUtils = rec {
    escapeSystemdExecArg =
      arg:
      let
        s =
          if lib.isPath arg then
            "${arg}"
          else if lib.isString arg then
            arg
          else if lib.isInt arg || lib.isFloat arg || lib.isDerivation arg || arg ? outPath then
            toString arg
          else
            throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
      in
      lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);
    escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
  };

  # systemd unit option values: what nixos/lib/systemd-unit-options.nix accepts
  # (scalars or lists of them; lists concatenate when merged).
  unitOption = types.mkOptionType {
    name = "systemd option";
    check =
      v:
      let
        scalar = x: lib.isBool x || lib.isInt x || lib.isString x || lib.isPath x || x ? outPath;
      in
      scalar v || (lib.isList v && lib.all scalar v);
    merge =
      loc: defs:
      if lib.any (def: lib.isList def.value) defs then
        lib.concatMap (def: lib.toList def.value) defs
      else
        lib.mergeEqualOption loc defs;
  };

  nixosStubs =
    { ... }:
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        users.users = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule {
              options = {
                isSystemUser = mkOption {
                  type = types.bool;
                  default = false;
                };
                group = mkOption {
                  type = types.str;
                  default = "";
                };
                description = mkOption {
                  type = types.str;
                  default = "";
                };
              };
            }
          );
        };
        users.groups = mkOption {
          default = { };
          type = types.attrsOf (types.submodule { });
        };
        systemd.tmpfiles.settings = mkOption {
          default = { };
          type = types.attrsOf (
            types.attrsOf (
              types.attrsOf (
                types.submodule (
                  { name, ... }:
                  {
                    options = {
                      type = mkOption {
                        type = types.str;
                        default = name;
                      };
                      mode = mkOption {
                        type = types.str;
                        default = "-";
                      };
                      user = mkOption {
                        type = types.str;
                        default = "-";
                      };
                      group = mkOption {
                        type = types.str;
                        default = "-";
                      };
                      age = mkOption {
                        type = types.str;
                        default = "-";
                      };
                      argument = mkOption {
                        type = types.str;
                        default = "";
                      };
                    };
                  }
                )
              )
            )
          );
        };
        # Set by the VM tests' guests (nix/tests.nix).
        virtualisation.cores = mkOption {
          type = types.ints.positive;
          default = 1;
        };
        virtualisation.memorySize = mkOption {
          type = types.ints.positive;
          default = 1024;
        };
        virtualisation.qemu.options = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        boot.kernelParams = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        systemd.services = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule {
              options = {
                description = mkOption {
                  type = types.str;
                  default = "";
                };
                wantedBy = mkOption {
                  type = types.listOf types.str;
                  default = [ ];
                };
                after = mkOption {
                  type = types.listOf types.str;
                  default = [ ];
                };
                wants = mkOption {
                  type = types.listOf types.str;
                  default = [ ];
                };
                environment = mkOption {
                  type = types.attrsOf (types.nullOr (types.either types.str types.path));
                  default = { };
                };
                serviceConfig = mkOption {
                  type = types.attrsOf unitOption;
                  default = { };
                };
              };
            }
          );
        };
      };
    };

  evaluateWith =
    pkgs: modules:
    lib.evalModules {
      modules = [
        nixosStubs
        { _module.args.pkgs = pkgs; }
      ]
      ++ modules;
      specialArgs.utils = stubUtils;
    };

  evaluate = modules: evaluateWith stubPkgs ([ ./module.nix ] ++ modules);

  # How NixOS writes a unit's [Service] section: one Key=value line per list
  # element, booleans as true/false.
  unitText =
    service:
    let
      render = v: if lib.isBool v then lib.boolToString v else toString v;
      line = k: v: lib.concatMapStrings (x: "${k}=${render x}\n") (lib.toList v);
    in
    ''
      [Unit]
      Description=${service.description}
      After=${lib.concatStringsSep " " service.after}

      [Service]
    ''
    + lib.concatStrings (
      lib.mapAttrsToList (k: v: "Environment=${builtins.toJSON "${k}=${v}"}\n") service.environment
    )
    + lib.concatStrings (lib.mapAttrsToList line service.serviceConfig)
    + ''

      [Install]
      WantedBy=${lib.concatStringsSep " " service.wantedBy}
    '';

  summarize =
    modules:
    let
      config = (evaluate modules).config;
      service = config.systemd.services.kestrel;
    in
    {
      configText = config.services.kestrel.configFile.text;
      # The same value as JSON, to check the TOML rendering against.
      configJSON = builtins.toJSON config.services.kestrel.configFile.value;
      unit = unitText service;
      inherit (service) serviceConfig;
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      users = config.users.users;
      groups = lib.attrNames config.users.groups;
      tmpfiles = config.systemd.tmpfiles.settings;
    };

  enabled = { services.kestrel.enable = true; };

  # Forces the whole evaluation; true when it fails, as each misuse must.
  fails =
    modules:
    !(builtins.tryEval (builtins.deepSeq (summarize ([ enabled ] ++ modules)) true)).success;
in
if internals then
  {
    inherit
      evaluateWith
      tomlFormat
      toTOML
      unitText
      ;
  }
else
{
  scenarios = {
    defaults = summarize [ enabled ];

    everything = summarize [
      enabled
      {
        services.kestrel = {
          settings = {
            sampling.frequency_hz = 49;
            # a Nix integer for a float key
            off_cpu.probability = 1;
            # a key without a typed option goes through the free-form type
            off_cpu.min_duration_us = 100;
            memory.bpf_cap_bytes = 16777216;
            symbols.cache_dir = "/srv/kestrel-cache";
            log.format = "json";
            exporters = [
              {
                kind = "pprof_dir";
                dir = "/srv/profiles";
                max_files = 10;
              }
              {
                kind = "folded_dir";
                dir = "/var/lib/kestrel/folded";
              }
              {
                kind = "otlp";
                endpoint = "https://collector.example.com:4317";
                headers.authorization = "Bearer \"token\" 100%";
              }
            ];
          };
          extraArgs = [
            "--log-level"
            "debug $HOME"
          ];
          memoryMax = null;
          readAnyFile = true;
        };
      }
    ];

    noExporters = summarize [
      enabled
      { services.kestrel.settings.exporters = [ ]; }
    ];

    disabled = {
      services = lib.attrNames (evaluate [ ]).config.systemd.services;
      users = lib.attrNames (evaluate [ ]).config.users.users;
    };
  };

  # The control for misuseFails: the same evaluation without a misuse succeeds.
  controlFails = fails [ ];

  misuseFails = {
    frequencyZero = fails [ { services.kestrel.settings.sampling.frequency_hz = 0; } ];
    frequencyTooHigh = fails [ { services.kestrel.settings.sampling.frequency_hz = 10001; } ];
    probabilityAboveOne = fails [ { services.kestrel.settings.off_cpu.probability = 1.5; } ];
    capBelowOneMiB = fails [ { services.kestrel.settings.memory.bpf_cap_bytes = 4096; } ];
    frequencyAsString = fails [ { services.kestrel.settings.sampling.frequency_hz = "19"; } ];
    nullInSettings = fails [ { services.kestrel.settings.log.level = null; } ];
    unknownModuleOption = fails [ { services.kestrel.frequency = 19; } ];
    extraArgsNotAList = fails [ { services.kestrel.extraArgs = "--log-level debug"; } ];
    exporterNotATable = fails [ { services.kestrel.settings.exporters = [ "otlp" ]; } ];
    # An empty exporter list is caught by the module's assertion (NixOS refuses
    # the configuration); here the assertion is reported, see noExporters.
    exporterWithoutKind = fails [ { services.kestrel.settings.exporters = [ { dir = "/x"; } ]; } ];
  };
}
