# NixOS VM tests: each boots a guest with services.kestrel enabled and checks
# the memory bounds the VM rig checks (issue 7), on the vCPU topologies of
# nix/topologies.nix, plus CPU hotplug through the test driver's QMP access.
#
#   nix build .#checks.x86_64-linux.vm-o2-p64 -L     # one test
#   nix flake check -L                               # all of them
#
# The guests need KVM for the possible-CPU counts: under TCG, kernels since 6.9
# ignore QEMU's hot-pluggable slots unless they detect a hypervisor (the test
# says so when it fails that way).
{
  pkgs,
  self,
}:
let
  inherit (pkgs) lib;
  topologies = import ./topologies.nix;

  # Settings of every guest: the rig records with off-CPU probability 1, so the
  # agent creates its off-CPU maps too; the agent writes its counters (BPF
  # memory per map, reports, exports) to a file after every one-second report.
  guestSettings = {
    off_cpu.probability = 1.0;
    agent = {
      report_interval_s = 1.0;
      stats_file = agentStatsFile;
    };
  };
  agentStatsFile = "/var/lib/kestrel/agent-stats.json";

  common =
    {
      online,
      possible,
      possibleCpusParam ? false,
    }:
    { ... }:
    {
      imports = [ self.nixosModules.default ];

      services.kestrel = {
        enable = true;
        settings = guestSettings;
      };

      virtualisation.cores = online;
      # `-smp` given twice is merged by QEMU, the later keys winning: this adds
      # the hot-pluggable slots to the `-smp ${cores}` of qemu-vm.nix.
      virtualisation.qemu.options = lib.optional (!possibleCpusParam) "-smp cpus=${toString online},maxcpus=${toString possible}";
      boot.kernelParams = lib.optional possibleCpusParam "possible_cpus=${toString possible}";
      # Per-CPU areas of hundreds of possible CPUs need guest memory.
      virtualisation.memorySize = if possible >= 128 then 2048 else 1024;
    };

  # Constants the helpers read, then the helpers themselves.
  prelude =
    nodes:
    let
      cfg = nodes.machine.services.kestrel;
    in
    ''
      KESTREL = "${lib.getExe cfg.package}"
      CONFIG = "${cfg.configFile}"
      TOTAL_BOUND = ${toString topologies.totalBoundBytes}
      GROWTH_BOUND = ${toString topologies.possibleCpuGrowthBoundBytes}
      GROWTH_UP_TO = ${toString topologies.possibleCpuGrowthBoundUpTo}
      AGENT_STATS = "${agentStatsFile}"
    ''
    + builtins.readFile ./vm_test_helpers.py;

  topologyTest =
    topology:
    pkgs.testers.runNixOSTest {
      name = "kestrel-${topology.name}";
      nodes.machine = common {
        inherit (topology) online possible;
        possibleCpusParam = topology.possibleCpusParam or false;
      };
      testScript =
        { nodes, ... }:
        prelude nodes
        + ''

          ONLINE = ${toString topology.online}
          POSSIBLE = ${toString topology.possible}

          machine.wait_for_unit("multi-user.target")
          topo = check_topology(machine, ONLINE, POSSIBLE, ${
            if topology.possibleCpusParam or false then "True" else "False"
          })
          # The module's generated file is accepted by Kestrel's strict parser.
          machine.succeed(f"{KESTREL} --config {CONFIG} config")

          with subtest("agent runs unprivileged with exactly the needed capabilities"):
              pid = wait_for_agent_maps(machine)
              check_agent_privileges(machine, pid)

          with subtest("agent's BPF memory is within the plan and the bound"):
              the_plan = plan(machine)
              check_agent_memory(machine, pid, the_plan)
              check_agent_stats(machine, the_plan)
              check_possible_cpu_growth(machine, ONLINE, len(topo["possible"]), the_plan)

          with subtest("kestrel record: every online CPU sampled, measured == planned"):
              stats = record(machine, 5, "/tmp/record")
              check_record(stats, topo["online"], the_plan)
              assert stats["possible_cpus"] == len(topo["possible"]), stats["possible_cpus"]

          with subtest("agent stops cleanly on SIGTERM"):
              stop_agent(machine)
        '';
    };

  hotplug = topologies.hotplug;

  hotplugTest = pkgs.testers.runNixOSTest {
    name = "kestrel-${hotplug.name}";
    nodes.machine = common { inherit (hotplug) online possible; };
    testScript =
      { nodes, ... }:
      prelude nodes
      + ''

        machine.wait_for_unit("multi-user.target")
        topo = check_topology(machine, ${toString hotplug.online}, ${toString hotplug.possible}, False)
        pid = wait_for_agent_maps(machine)
        wait_for_perf_events(machine, pid, ${toString hotplug.online})

        # A recording across the whole hotplug sequence, with more busy loops
        # than CPUs so that added CPUs get work at once.
        machine.succeed("rm -rf /tmp/hotplug /tmp/hotplug.rc")
        start_load(machine, 70, "${toString hotplug.possible}")
        machine.succeed(
            f"({RECORD_ENV} {KESTREL} --config {CONFIG} record --duration 45 -o /tmp/hotplug --no-progress "
            "> /tmp/hotplug.log 2>&1; echo $? > /tmp/hotplug.rc) >/dev/null 2>&1 &"
        )
        time.sleep(5)

        with subtest("hot-add vCPUs through QMP and bring them online"):
            slots = hotpluggable_slots(machine)
            print(f"empty vCPU slots: {slots}")
            assert len(slots) >= ${toString hotplug.add}, slots
            for index, slot in enumerate(slots[:${toString hotplug.add}]):
                hot_add(machine, slot, f"kestrel-cpu{index}")
            machine.wait_until_succeeds(
                "test $(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l) -eq ${
                  toString (hotplug.online + hotplug.add)
                }"
            )
            added = sorted(set(cpu_list(machine.succeed("cat /sys/devices/system/cpu/present"))) - set(topo["present"]))
            print(f"added CPUs: {added}")
            assert len(added) == ${toString hotplug.add}, added
            for cpu in added:
                set_online(machine, cpu, True)
            wait_for_perf_events(machine, pid, ${toString (hotplug.online + hotplug.add)})
            time.sleep(10)

        with subtest("take one offline again"):
            removed = added[-${toString hotplug.remove}:]
            for cpu in removed:
                set_online(machine, cpu, False)
            online_now = ${toString (hotplug.online + hotplug.add - hotplug.remove)}
            wait_for_perf_events(machine, pid, online_now)

        with subtest("the recording saw the added CPUs and stayed within its plan"):
            machine.wait_until_succeeds("test -e /tmp/hotplug.rc", timeout=180)
            print(machine.succeed("cat /tmp/hotplug.log"))
            assert machine.succeed("cat /tmp/hotplug.rc").strip() == "0", "kestrel record failed during hotplug"
            stats = json.loads(machine.succeed("cat /tmp/hotplug/stats.json"))
            per_cpu = stats["samples"]["per_cpu"]
            for cpu in added:
                assert int(per_cpu.get(str(cpu), 0)) > 0, f"added CPU {cpu} produced no samples: {per_cpu}"
            assert stats["online_cpus_at_end"] == online_now, stats["online_cpus_at_end"]
            for bpf_map in stats["maps"]:
                assert bpf_map["memlock_bytes"] == bpf_map["planned_bytes"], f"measured != planned: {bpf_map}"
            assert stats["total_memlock_bytes"] <= TOTAL_BOUND

        with subtest("the agent kept running within the bound and stops cleanly"):
            machine.succeed("systemctl is-active kestrel.service")
            assert agent_pid(machine) == pid, "the agent restarted during hotplug"
            measured = sum(int(fields["memlock"]) for fields in agent_bpf_maps(machine, pid))
            assert measured <= TOTAL_BOUND, f"agent's BPF maps use {measured} bytes after hotplug"
            stop_agent(machine)
      '';
  };
in
lib.listToAttrs (
  map (topology: lib.nameValuePair "vm-${topology.name}" (topologyTest topology)) topologies.matrix
)
// {
  vm-hotplug = hotplugTest;
}
