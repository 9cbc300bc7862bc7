# The vCPU topologies of the NixOS VM tests: the VM rig's matrix (issue 7),
# (online, possible) CPUs. Plain data, so nix/check-offline.sh can evaluate it
# without nixpkgs.
#
# `possible` CPUs come from QEMU's `-smp cpus=O,maxcpus=P` (hot-pluggable
# slots), except where `possibleCpusParam` is set: past QEMU's 255 CPUs on the
# pc machine the guest kernel is told with `possible_cpus=N` instead, and the
# kernel caps it at its NR_CPUS (the test reads the cap from
# /sys/devices/system/cpu/kernel_max).
{
  # The bound of the issue: what grows with possible CPUs (total at P minus
  # total at P = O) stays under 1 MiB up to 240 possible CPUs.
  possibleCpuGrowthBoundBytes = 1048576;
  possibleCpuGrowthBoundUpTo = 240;
  # Kestrel's default memory.bpf_cap_bytes: no plan may exceed it.
  totalBoundBytes = 8388608;

  matrix = [
    {
      name = "o1-p1";
      online = 1;
      possible = 1;
    }
    {
      name = "o2-p8";
      online = 2;
      possible = 8;
    }
    {
      name = "o2-p64";
      online = 2;
      possible = 64;
    }
    {
      name = "o1-p128";
      online = 1;
      possible = 128;
    }
    {
      name = "o4-p240";
      online = 4;
      possible = 240;
    }
    {
      name = "o2-p1024";
      online = 2;
      possible = 1024;
      possibleCpusParam = true;
    }
  ];

  # CPU hotplug: start at (2, 8), hot-add two vCPUs through QMP and bring them
  # online, then take one offline again.
  hotplug = {
    name = "hotplug";
    online = 2;
    possible = 8;
    add = 2;
    remove = 1;
  };
}
