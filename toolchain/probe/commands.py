"""The shell side of every fact: read-only POSIX sh (dash, bash, busybox ash, Android's mksh),
each paired with a parser in parsers/ under the same name.

Rules that keep one script fast and its output parseable on any board:
- a missing file or tool prints nothing (guards, `2>/dev/null`, `grep -s`): an error message
  must never be mistaken for a value;
- sysfs is read with one `grep -sH . FILES` after a `cd`, not one `cat` per file (one process,
  and relative paths hold no ':');
- nothing here writes, except the storage read test's temporary file (stage 2, deleted).
"""

from __future__ import annotations

from toolchain.device import device_source
from toolchain.probe.gather import FactCommand


def _py(name: str) -> str:
    """A python snippet run by the target's interpreter; without python it prints nothing useful."""
    code = device_source(name).replace("'", "'\"'\"'")
    return f"command -v \"$PY\" >/dev/null 2>&1 && \"$PY\" -c '{code}'"


# The deploy directory may not exist yet: df and the read test use its nearest existing ancestor.
_EXISTING_DIR = 'd=$DEPLOY_DIR; while [ ! -e "$d" ] && [ "$d" != / ] && [ -n "$d" ]; do d=$(dirname "$d"); done'

# df, the mount's line of mountinfo (major:minor and filesystem), then the whole disk under it:
# partitions step up to their disk, device-mapper and md step down to the first slave.
_STORAGE = _EXISTING_DIR + r"""
o=$(df -Pk "$d" 2>/dev/null) && echo "$o"
set -- $(echo "$o" | tail -n 1); mnt=$6; mm=
while read -r _ _ m r p rest; do [ "$p" = "$mnt" ] && { mm=$m; echo "mountinfo: $m $r $p $rest"; }; done < /proc/self/mountinfo
b=
[ -n "$mm" ] && b=$(readlink -f "/sys/dev/block/$mm" 2>/dev/null)
for _ in 1 2 3; do
  case ${b##*/} in dm-*|md*) for s in "$b"/slaves/*; do [ -e "$s" ] && b=$(readlink -f "$s"); break; done ;; esac
  [ -e "$b/partition" ] && b=${b%/*}
done
[ -n "$b" ] && [ -d "$b" ] && echo "sysfs: $b" && cd "$b" && grep -sH . queue/rotational removable device/type device/model device/name device/vendor"""

# The memory limit of this process's cgroup and every ancestor (v2 memory.max, v1
# memory.limit_in_bytes), found through mountinfo so hybrid and namespaced hierarchies resolve.
# The usage printed leaves out the page cache (memory.stat's file pages): the kernel reclaims it
# before it kills anything, and a model shipped earlier would otherwise count as memory in use.
_CGROUP = r"""while IFS=: read -r _ ctl path; do
  case ",$ctl," in
    ,,) fs=cgroup2; f=memory.max; u=memory.current ;;
    *,memory,*) fs=cgroup; f=memory.limit_in_bytes; u=memory.usage_in_bytes ;;
    *) continue ;;
  esac
  while read -r _ _ _ root mp rest; do
    case "$rest" in *" - $fs "*) ;; *) continue ;; esac
    [ $fs = cgroup ] && case "$rest" in *memory*) ;; *) continue ;; esac
    if [ "$root" = / ]; then d=$path; else d=${path#"$root"}; fi
    while :; do
      if [ -r "$mp$d/$f" ]; then
        fc=0
        while read -r k v; do
          case "$fs $k" in "cgroup2 active_file"|"cgroup2 inactive_file"|"cgroup total_active_file"|"cgroup total_inactive_file") fc=$((fc + v)) ;; esac
        done 2>/dev/null < "$mp$d/memory.stat"
        us=$(cat "$mp$d/$u" 2>/dev/null)
        [ -n "$us" ] && us=$((us - fc))
        echo "$fs ${d:-/} $(cat "$mp$d/$f") $us"
      fi
      { [ -z "$d" ] || [ "$d" = / ]; } && break
      d=${d%/*}
    done
    break
  done < /proc/self/mountinfo
done < /proc/self/cgroup"""

# Stage 1: facts, one round trip. Order matters only for reading the output.
FACTS: list[FactCommand] = [
    FactCommand("uname", "uname -srm; getconf LONG_BIT 2>/dev/null"),
    FactCommand("hostname", "uname -n", record=False),  # only to scrub recordings; never a fact
    FactCommand("os_release", "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null"),
    FactCommand("libc", "getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>&1 | head -n 2"),
    FactCommand("meminfo", "cat /proc/meminfo"),
    FactCommand("cpuinfo", "cat /proc/cpuinfo"),
    FactCommand(
        "cpufreq",
        "cd /sys/devices/system/cpu && grep -sH . online cpu[0-9]*/cpufreq/cpuinfo_max_freq cpu[0-9]*/cpu_capacity ../../cpu_atom/cpus",
    ),
    # GNU nproc honours OMP_NUM_THREADS; the fact is the cores this user may run on.
    FactCommand("nproc", "env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN"),
    FactCommand("storage", _STORAGE),
    FactCommand("dt_model", "[ -r /proc/device-tree/model ] && tr -d '\\000' < /proc/device-tree/model"),
    FactCommand("dt_compatible", "[ -r /proc/device-tree/compatible ] && tr '\\000' '\\n' < /proc/device-tree/compatible"),
    FactCommand("dmi", "cd /sys/class/dmi/id 2>/dev/null && grep -sH . product_name sys_vendor board_name"),
    FactCommand("tegra_release", "[ -r /etc/nv_tegra_release ] && head -n 1 /etc/nv_tegra_release"),
    FactCommand("getprop", "command -v getprop >/dev/null 2>&1 && getprop"),
    FactCommand(
        "darwin",
        "[ -x /usr/bin/sw_vers ] && { sysctl hw.model hw.memsize hw.ncpu hw.pagesize hw.perflevel0.physicalcpu "
        "hw.perflevel1.physicalcpu machdep.cpu.brand_string hw.optional.AdvSIMD hw.optional.arm.FEAT_DotProd "
        "hw.optional.arm.FEAT_I8MM hw.optional.arm.FEAT_BF16 hw.optional.arm.FEAT_SME hw.optional.avx2_0 "
        "hw.optional.avx512f vm.swapusage; sw_vers; vm_stat; } 2>/dev/null",
    ),
    FactCommand("cgroup", _CGROUP),
    FactCommand("swap", "cat /proc/swaps 2>/dev/null; cd /sys/block 2>/dev/null && grep -sH . zram*/disksize"),
    FactCommand("oom", "grep -sH . /proc/self/oom_score_adj /sys/module/lowmemorykiller/parameters/minfree "
                       "/sys/module/lowmemorykiller/parameters/adj; echo \"pagesize:$(getconf PAGESIZE 2>/dev/null)\""),
    FactCommand("nvidia_smi", "command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader"),
    # One sample: at --interval 100 the first line comes within 0.1 s; head's exit ends tegrastats.
    FactCommand("tegrastats", "command -v tegrastats >/dev/null 2>&1 && timeout 2 tegrastats --interval 100 | head -n 1"),
    FactCommand("vulkan_icd", "ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d 2>/dev/null"),
    FactCommand(
        "gpu",
        "grep -sH . /sys/class/misc/mali0/device/gpuinfo /sys/class/kgsl/kgsl-3d0/gpu_model; "
        "cd /sys/class/drm 2>/dev/null && grep -sH . card[0-9]/device/uevent | grep -E ':(DRIVER|OF_COMPATIBLE_0|PCI_ID)='; "
        "ls -d /dev/mali0 /sys/class/misc/mali0 /dev/kgsl-3d0 /dev/dri/renderD* 2>/dev/null",
    ),
    FactCommand(
        "npu",
        "ls -d /dev/rknpu* /dev/hailo* /dev/apex_* /dev/accel/accel* /dev/fastrpc-* /dev/adsprpc-smd "
        "/proc/device-tree/npu@* /sys/kernel/debug/rknpu 2>/dev/null; "
        "grep -sH . /sys/kernel/debug/rknpu/version /sys/module/rknpu/version; "
        "cd /sys/class/accel 2>/dev/null && grep -sH DRIVER= accel*/device/uevent; "
        "cd /sys/bus/usb/devices 2>/dev/null && grep -sH . */idVendor */idProduct",
    ),
    FactCommand("thermal", "cd /sys/class/thermal 2>/dev/null && grep -sH . thermal_zone*/type thermal_zone*/temp"),
    FactCommand("throttled", "command -v vcgencmd >/dev/null 2>&1 && vcgencmd get_throttled"),
    FactCommand("pmic", "command -v vcgencmd >/dev/null 2>&1 && vcgencmd pmic_read_adc"),
    FactCommand(
        "power",
        "ls -d /sys/class/powercap/intel-rapl:* /sys/class/hwmon/hwmon*/power*_input /sys/class/hwmon/hwmon*/curr*_input "
        "/sys/class/power_supply/*/current_now /sys/class/power_supply/*/voltage_now /sys/class/power_supply/*/power_now 2>/dev/null; "
        "cd /sys/class/hwmon 2>/dev/null && grep -sH . hwmon*/name hwmon*/in*_label hwmon*/curr*_label hwmon*/power*_label",
    ),
    FactCommand("runtime", _py("runtime_info.py")),
]

# Stage 2 (skipped by --quick): measurements and slow tools. A second round trip, because the
# bandwidth test needs the decode cores that stage 1's facts decide.
# TODO(calibration): when llama-cpp-python is on the target, the better bandwidth figure is
# llama.cpp's own: decode a GGUF larger than the caches (toolchain/synthetic.py writes one, e.g.
# synthetic.ensure("synth-llama-0.5b", "Q4_0"), ~300 MB) and report streamed bytes per token x
# tokens/s, method "llama.cpp decode of a calibration GGUF". It has to ship the file through the
# shipper's store first, so it belongs to a separate, opt-in calibration step, not to every probe.
MEASUREMENTS: list[FactCommand] = [
    FactCommand("vulkaninfo", "command -v vulkaninfo >/dev/null 2>&1 && timeout 10 vulkaninfo --summary 2>/dev/null", quick=False),
    FactCommand("system_profiler", "[ -x /usr/sbin/system_profiler ] && system_profiler SPDisplaysDataType 2>/dev/null", quick=False),
    FactCommand("llama", _py("llama_info.py"), quick=False),
    FactCommand("membw", _py("membw.py"), quick=False),
    FactCommand(
        "storage_read",
        _py("storage_read.py") + " || { " + _EXISTING_DIR + "; "
        # no python: dd with O_DIRECT over the largest existing file of 64 MiB or more under the deploy dir
        "f=$(find \"$d\" -xdev -type f -size +131072 2>/dev/null | head -n 1); "
        "[ -n \"$f\" ] && dd if=\"$f\" of=/dev/null bs=1048576 count=256 iflag=direct 2>&1 | tail -n 1; }",
        quick=False,
    ),
]

ALL_FACTS = FACTS + MEASUREMENTS
