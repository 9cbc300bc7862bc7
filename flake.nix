{
  description = "Kestrel: a continuous eBPF profiler for Linux with bounded, explainable memory";

  # The only input. No flake.lock is committed: it was written where nixpkgs
  # cannot be fetched; the first `nix run`, `nix build` or `nix flake lock`
  # pins the nixos-unstable of that day (Kestrel needs Rust >= 1.91).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      # eBPF and perf events are Linux-only.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # The VM tests model x86 guests (QEMU's pc machine, x86 CPU hotplug).
      vmTestSystems = [ "x86_64-linux" ];

      forAllSystems =
        f:
        lib.genAttrs systems (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ self.overlays.default ];
            }
          )
        );
    in
    {
      overlays.default = final: _prev: {
        kestrel = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.kestrel;
        kestrel = pkgs.kestrel;
      });

      # `nix run` profiles the whole system: `kestrel record` with its arguments
      # (`nix run . -- --duration 30 -o out`). It needs root or CAP_BPF,
      # CAP_PERFMON, CAP_SYS_PTRACE and CAP_SYSLOG; `kestrel check` says what is
      # missing. Other commands: `nix run .#kestrel -- plan`.
      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${pkgs.writeShellScript "kestrel-record" ''
            exec ${lib.getExe pkgs.kestrel} record "$@"
          ''}";
          meta.description = "Profile the whole system with `kestrel record`";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            # Rust (rust-version 1.91 or newer) and its tools.
            pkgs.cargo
            pkgs.rustc
            pkgs.rustfmt
            pkgs.clippy
            pkgs.rust-analyzer
            # BPF: the unwrapped clang the package uses (see nix/package.nix),
            # LLVM tools to inspect objects, bpftool for vmlinux.h and maps.
            pkgs.kestrel.bpfClang
            pkgs.llvmPackages.llvm
            pkgs.bpftools
            # The vendored libbpf's build.
            pkgs.pkg-config
            pkgs.gnumake
            pkgs.elfutils
            pkgs.zlib
            # The VM rig: QEMU, a static busybox and cpio for the initramfs.
            pkgs.qemu
            pkgs.pkgsStatic.busybox
            pkgs.cpio
            # `go tool pprof` to read profiles; Python for the OTLP receiver
            # of the agent's tests (opentelemetry-proto and grpcio from PyPI).
            pkgs.go
            pkgs.python3
            # Peers to compare with.
            pkgs.linuxPackages.perf
            pkgs.bpftrace
          ];
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });

      nixosModules.default =
        { pkgs, lib, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.kestrel.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
      nixosModules.kestrel = self.nixosModules.default;

      checks = forAllSystems (
        pkgs:
        {
          package = pkgs.kestrel;
        }
        // lib.optionalAttrs (lib.elem pkgs.stdenv.hostPlatform.system vmTestSystems) (
          import ./nix/tests.nix { inherit pkgs self; }
        )
      );
    };
}
