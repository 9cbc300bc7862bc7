#!/bin/busybox sh
# /init of the Kestrel VM-test initramfs (PID 1 in the guest).
#
# Reads its parameters from the kernel command line (kvt.*), runs
# `kestrel plan --json` and `kestrel record` beside a CPU-burning workload,
# prints every result on the serial console between @@KVT markers (files as
# base64 with their byte count, so the host can tell a torn transfer from a
# real one) and powers the guest off. The host side is vm-tests/src/console.rs.
#
#   kvt.mode=matrix|hotplug   hotplug: online CPUs the host hot-adds, take some offline again
#   kvt.duration=SECONDS      length of the record
#   kvt.hotplug_add=N         hotplug: how many CPUs the host will add
#   kvt.offline_after=SECONDS hotplug: how long the added CPUs run before going offline
#   kvt.offline_count=N       hotplug: how many of the added CPUs go offline (the last
#                             added first; default 1)

/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# Kernel messages would interleave with the markers: keep them off the console.
echo 1 > /proc/sys/kernel/printk

arg() {
	for word in $(cat /proc/cmdline); do
		case "$word" in
		kvt.$1=*) echo "${word#kvt.$1=}" ;;
		esac
	done
}

event() { echo "@@KVT-EVENT $*@@"; }

emit() {
	if [ -f "$2" ]; then
		echo "@@KVT-BEGIN $1 $(wc -c < "$2")@@"
		base64 "$2"
		echo "@@KVT-END $1@@"
	else
		event "missing $1"
	fi
}

finish() {
	event "done"
	sync
	poweroff -f
}

MODE=$(arg mode)
DURATION=$(arg duration)
[ -n "$DURATION" ] || DURATION=5
CPU=/sys/devices/system/cpu

export KESTREL_SYMBOLS__CACHE_DIR=/tmp/kcache
export NO_COLOR=1
export HOME=/tmp

event "boot $(uname -r) online=$(cat $CPU/online) possible=$(cat $CPU/possible) present=$(cat $CPU/present) perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid) unprivileged_bpf_disabled=$(cat /proc/sys/kernel/unprivileged_bpf_disabled)"

/bin/kvt-workload 2>/tmp/workload.log &
WORKLOAD=$!

# What this kernel offers, as Kestrel's probes find it (the rig checks that
# it names what the kernel lacks, e.g. task storage before 5.11).
/bin/kestrel check >/tmp/check.txt 2>&1
event "rc check $?"
/bin/kestrel check --json >/tmp/check.json 2>/dev/null

/bin/kestrel plan --json --off-cpu-probability 1 >/tmp/plan.json 2>/tmp/plan.log
event "rc plan $?"

/bin/kestrel record --duration "$DURATION" --off-cpu-probability 1 \
	-o /tmp/out --no-progress >/tmp/record.out 2>/tmp/record.log &
RECORD=$!

if [ "$MODE" = hotplug ]; then
	WANT=$(arg hotplug_add)
	OFFLINE_AFTER=$(arg offline_after)
	[ -n "$OFFLINE_AFTER" ] || OFFLINE_AFTER=2
	OFFLINE_COUNT=$(arg offline_count)
	[ -n "$OFFLINE_COUNT" ] || OFFLINE_COUNT=1
	# The host hot-adds vCPUs once Kestrel samples: wait for its first log line.
	tries=0
	while ! grep -q recording /tmp/record.log 2>/dev/null; do
		tries=$((tries + 1))
		[ $tries -gt 600 ] && break
		kill -0 $RECORD 2>/dev/null || break
		sleep 0.1
	done
	event "recording"
	ADDED=""
	count=0
	tries=0
	while [ $count -lt "$WANT" ] && [ $tries -lt 600 ]; do
		for dir in $CPU/cpu[0-9]*; do
			[ -f "$dir/online" ] || continue
			[ "$(cat "$dir/online")" = 0 ] || continue
			cpu=${dir##*/cpu}
			case " $ADDED " in *" $cpu "*) continue ;; esac
			if echo 1 > "$dir/online"; then
				ADDED="$ADDED $cpu"
				count=$((count + 1))
				/bin/kvt-workload "$cpu" 2>>/tmp/workload.log &
				event "cpu-online $cpu"
			else
				event "cpu-online-failed $cpu"
			fi
		done
		tries=$((tries + 1))
		sleep 0.1
	done
	event "hotplug-added$ADDED"
	sleep "$OFFLINE_AFTER"
	# The last OFFLINE_COUNT added CPUs, the last added first.
	REVERSED=""
	for cpu in $ADDED; do REVERSED="$cpu $REVERSED"; done
	taken=0
	for cpu in $REVERSED; do
		[ $taken -lt "$OFFLINE_COUNT" ] || break
		taken=$((taken + 1))
		if echo 0 > "$CPU/cpu$cpu/online"; then
			event "cpu-offline $cpu"
		else
			event "cpu-offline-failed $cpu"
		fi
	done
	kill -0 $RECORD 2>/dev/null || event "record-ended-before-offline"
fi

wait $RECORD
event "rc record $?"
kill $WORKLOAD 2>/dev/null
event "online-at-end $(cat $CPU/online)"

emit check /tmp/check.json
emit check-text /tmp/check.txt
emit plan /tmp/plan.json
emit plan-log /tmp/plan.log
emit stats /tmp/out/stats.json
emit record-log /tmp/record.log
finish
