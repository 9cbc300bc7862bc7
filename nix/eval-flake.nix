# Evaluates flake.nix's outputs against nixpkgs' `lib` and a stub of nixpkgs'
# packages: every output is forced (package arguments, the source fileset, the
# app, the development shell, the NixOS module through nixosModules.default,
# each VM test's guest configuration and rendered test script). Packages are
# stand-ins named after the nixpkgs attributes the flake uses, so this checks
# the flake's own wiring, not that nixpkgs has those attributes or builds them.
#
#   nix-instantiate --eval --strict --json nix/eval-flake.nix \
#     --argstr libPath /path/to/nixpkgs/lib
#
# nix/check-offline.sh writes the rendered test scripts out and runs pyflakes
# and mypy on them.
{
  libPath,
  system ? null,
  overlays ? [ ],
}:
let
  lib = import libPath;
  moduleEval = import ./eval-module.nix {
    inherit lib;
    internals = true;
  };

  fakeHash = name: builtins.substring 0 32 (builtins.hashString "sha256" name);
  drv =
    attrs:
    attrs
    // {
      type = "derivation";
      outPath = "/nix/store/${fakeHash attrs.name}-${attrs.name}";
      drvPath = "/nix/store/${fakeHash attrs.name}-${attrs.name}.drv";
    };
  tool = name: drv { inherit name; };

  stubPkgsFor =
    system: overlays:
    let
      base = final: {
        inherit lib;
        stdenv.hostPlatform.system = system;
        callPackage =
          fn: args:
          let
            f = if builtins.isFunction fn then fn else import fn;
          in
          f (builtins.intersectAttrs (builtins.functionArgs f) final // args);
        formats.toml = { }: moduleEval.tomlFormat;
        rustPlatform = {
          buildRustPackage =
            args:
            drv (
              removeAttrs args [ "passthru" ]
              // {
                name = "${args.pname}-${args.version}";
              }
            )
            // args.passthru or { };
          rustLibSrc = tool "rust-lib-src";
        };
        llvmPackages = {
          clang-unwrapped = tool "clang-19.1.7" // {
            version = "19.1.7";
          };
          llvm = tool "llvm-19.1.7";
        };
        runCommand = name: env: buildCommand: drv (env // { inherit name buildCommand; });
        writeShellScript = name: text: drv { inherit name text; };
        mkShell = args: drv ({ name = "nix-shell"; } // args);
        testers.runNixOSTest =
          test:
          let
            node = moduleEval.evaluateWith final [ test.nodes.machine ];
          in
          drv {
            name = "vm-test-run-${test.name}";
            testScript = test.testScript { nodes.machine = node.config; };
            guest = {
              inherit (node.config.virtualisation) cores memorySize;
              qemuOptions = node.config.virtualisation.qemu.options;
              inherit (node.config.boot) kernelParams;
              kestrelConfig = node.config.services.kestrel.configFile.text;
            };
          };
        pkgsStatic.busybox = tool "busybox-static";
        linuxPackages.perf = tool "perf";
      }
      // lib.genAttrs [
        "pkg-config"
        "rustfmt"
        "elfutils"
        "zlib"
        "cargo"
        "rustc"
        "clippy"
        "rust-analyzer"
        "bpftools"
        "gnumake"
        "qemu"
        "cpio"
        "go"
        "python3"
        "bpftrace"
      ] tool;
    in
    lib.fix (lib.extends (lib.composeManyExtensions overlays) base);

  # flake.nix does `import nixpkgs { system, overlays }`: the input's outPath is
  # a file that calls back into this one.
  stubNixpkgs = {
    inherit lib;
    outPath = builtins.toFile "nixpkgs-stub.nix" ''
      { system, overlays ? [ ] }:
      import ${toString ./eval-flake.nix} {
        libPath = ${builtins.toJSON (toString libPath)};
        inherit system overlays;
      }
    '';
  };

  flake = import ../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    nixpkgs = stubNixpkgs;
  };

  summarizePackage = package: {
    inherit (package) name version doCheck;
    inherit (package.meta) mainProgram platforms;
    cargoBuildFlags = package.cargoBuildFlags;
    nativeBuildInputs = map (p: p.name) package.nativeBuildInputs;
    buildInputs = map (p: p.name) package.buildInputs;
    cargoLock = toString package.cargoLock.lockFile;
    # Forces the fileset (every listed path must exist). lib.fileset needs
    # builtins.readFileType, which Nix has since 2.14.
    src =
      if builtins ? readFileType then
        package.src.outPath
      else
        "not evaluated: lib.fileset needs Nix >= 2.14, this is ${builtins.nixVersion}";
  };

  summarize = {
    inherit (flake) description;
    inputs = lib.mapAttrs (_: input: input.url) flake.inputs;
    packages = lib.mapAttrs (_: packages: lib.mapAttrs (_: summarizePackage) packages) outputs.packages;
    apps = lib.mapAttrs (
      _: apps:
      lib.mapAttrs (_: app: {
        inherit (app) type;
        program = app.program;
        inherit (app.meta) description;
      }) apps
    ) outputs.apps;
    devShells = lib.mapAttrs (
      _: shells: lib.mapAttrs (_: shell: map (p: p.name) shell.packages) shells
    ) outputs.devShells;
    overlay = lib.attrNames (outputs.overlays.default { } { });
    nixosModules = lib.attrNames outputs.nixosModules;
    checks = lib.mapAttrs (
      _: checks:
      lib.mapAttrs (
        _: check:
        {
          inherit (check) name;
        }
        // lib.optionalAttrs (check ? testScript) { inherit (check) testScript guest; }
      ) checks
    ) outputs.checks;
    # The NixOS module as the flake exports it: the package defaults to the
    # flake's own.
    modulePackage =
      (moduleEval.evaluateWith (stubPkgsFor "x86_64-linux" [ ]) [
        outputs.nixosModules.default
        { services.kestrel.enable = true; }
      ]).config.services.kestrel.package.name;
  };
in
if system != null then stubPkgsFor system overlays else summarize
