"""`edgedeploy ship --target A --target B ...`: one model across a group of boards.

probe every board -> measure head -> worker links -> plan the group (plan/group.py). A plan one
board can do alone stays on one board: the head's own deployment (pipeline.deploy). A split:

  provision the head's llama-cpp-python; the RPC build (deploy/rpc.py) on every node, keyed by
  board kind -> ship the GGUF to the head only -> start rpc-server on each worker, bound to the
  address the head reaches it at, and one on the head bound to 127.0.0.1 for the head's own layers
  -> package a release whose settings name those servers in the plan's device order, the plan's
  tensor_split and n_gpu_layers -> run the bench on the head -> each node's peak memory (the
  servers' VmHWM, the runner's), the bytes each worker's interface carried -> stop every server
  and check it gone (in a finally: also when anything failed) -> validate per node.

Why the head runs an rpc-server of its own: llama.cpp puts RPC devices first and never lists the
CPU as a device (src/llama.cpp, llama_model_load_from_file_impl), so on a CPU-only head the
offloaded layers (the last n_gpu_layers, the output layer always among them) all go to RPC
devices and the head's CPU keeps only the first layers and the token embeddings. The plan
(plan/split.py) keeps the output layer on the head, so the logits (n_vocab floats a token) never
cross the link: the head's layers and the output run in a loopback rpc-server, the last device.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.core.errors import EdgeDeployError, InternalError, NothingFitsError, TargetError
from toolchain.core.events import Events
from toolchain.core.nouns import Check, HostFacts, NodeTelemetry, Plan, SplitPlacement, TargetSpec, Telemetry, Verdict
from toolchain.core.serde import to_json_dict
from toolchain.deploy import rpc
from toolchain.deploy.pipeline import DeployRequest, cached_sha256, deploy
from toolchain.plan.group import GroupMember
from toolchain.transports.base import Transport
from toolchain.verdict.report import Failure, Report, RunnerFailed, RunnerOutOfMemory, ShipFailed, VerdictFailed, new_run_dir, write_reports
from toolchain.verdict.validate import failed_run_verdict, validate

HEAD_LOOPBACK = "127.0.0.1"
MEMORY_TOLERANCE = 0.25  # a node's measured peak vs its planned share: beyond this, a warning


@dataclass
class Node:
    spec: TargetSpec
    transport: Transport
    facts: HostFacts
    root: str
    python: str


def group_members(specs: list[TargetSpec], conns: list[Transport], facts: list[HostFacts], events: Events, *,
                  fresh_links: bool = False) -> list[GroupMember]:
    """GroupMembers for plan_group: the head first, every worker with its measured link."""
    from toolchain.probe.link import Endpoint, link_for, worker_address
    from toolchain.probe.reach import target_python

    head = Endpoint(facts[0].target, conns[0], target_python(specs[0], facts[0]))
    members = [GroupMember(facts[0], specs[0].kind, specs[0].board)]
    for s, t, f in zip(specs[1:], conns[1:], facts[1:], strict=True):
        address = worker_address(s, t)
        worker = Endpoint(f.target, t, target_python(s, f))
        with events.busy(f"measuring the link {head.name} -> {worker.name} ({address})"):
            link = link_for(head, worker, address, facts[0], f, fresh=fresh_links)
        members.append(GroupMember(f, s.kind, s.board, link))
    return members


def ship_group(specs: list[TargetSpec], request: DeployRequest, events: Events, *, accept_new_host_key: bool = False,
               run_dir: Path | None = None) -> Report:
    """Deploy one model over the group `specs` (the first is the head). Returns the passing Report;
    raises ShipFailed otherwise (a worker unreachable is infrastructure: exit 3)."""
    from toolchain.transports.factory import connect

    name = "+".join(s.name for s in specs)
    run_dir = run_dir or new_run_dir(specs[0].name)
    stage = "connect"
    plan: Plan | None = None
    verdict: Verdict | None = None
    tel: Telemetry | None = None
    nodes_tel: list[NodeTelemetry] = []
    release = None
    servers = rpc.RpcServers()

    def report(failure: Failure | None = None) -> Report:
        v = verdict or (failed_run_verdict(failure.message) if failure else Verdict(True, []))
        return Report(target=name, run_dir=str(run_dir), verdict=v, plan=plan, release=release, telemetry=tel, failure=failure,
                      nodes=nodes_tel)

    with ExitStack() as stack:
        try:
            events.stage("connect")
            conns = []
            for s in specs:
                events.step(f"connecting to {s.name}")
                conns.append(stack.enter_context(connect(s, accept_new_host_key=accept_new_host_key or s.host_key == "accept-new")))
            stage = "probe"
            events.stage(stage)
            nodes = _probe(specs, conns, request, events)
            (run_dir / "facts.json").write_text(json.dumps([to_json_dict(n.facts) for n in nodes], indent=2) + "\n")
            stage = "plan"
            events.stage(stage)
            from toolchain.plan.group import plan_group

            members = group_members(specs, conns, [n.facts for n in nodes], events)
            plan = plan_group(members, request.plan)
            (run_dir / "plan.json").write_text(json.dumps(to_json_dict(plan), indent=2) + "\n")
            if plan.split is None:
                events.log(f"  group: {plan.group_reason}")
                if plan.selected is None:
                    verdict = Verdict(False, [Check("plan", False, plan.nearest_miss, "a fitting candidate")])
                    raise NothingFitsError(f"nothing fits the budgets on the group {name}; nearest: {plan.nearest_miss}",
                                           "raise --budget, lower --ctx, or add a board to the group")
                # one board can do it alone: the head's own deployment, nothing started on the workers
                return deploy(conns[0], replace(request, target=specs[0]), events, run_dir=run_dir)
            split = plan.split
            sel = plan.selected
            assert sel is not None, "a split plan has a selection"
            for n in split.nodes:
                events.log(f"  {n.role} {n.target}: layers {n.layer_first}-{n.layer_first + n.layer_count - 1}"
                           f"{' + output' if n.output_layer else ''}, {n.memory_bytes / 2**20:.0f} MiB of {n.usable_memory_bytes / 2**20:.0f}")
            stage = "provision"
            events.stage(stage)
            by_target = {n.facts.target: n for n in nodes}
            head = nodes[0]
            head_python = _provision_head(head, request, events)
            remote = _push_builds(nodes, head_python, events)

            from toolchain.models.catalog import load_catalog
            from toolchain.models.gguf_reader import read_gguf
            from toolchain.models.sources import obtain

            gguf = Path(sel.gguf_path) if sel.gguf_path else obtain(load_catalog()[sel.model], sel.quant, log=events.log)
            read_gguf(gguf)
            sha = cached_sha256(gguf)
            stage = "transfer"
            events.stage(stage)
            from toolchain.deploy.releases import Shipper

            shipper = Shipper(head.transport, head.root, python=head_python, log=events.log)
            shipper.prepare()
            with events.transfer("model", gguf.stat().st_size) as bar:  # the head only: llama.cpp sends the workers their tensors
                _, sent, present = shipper.upload_model(gguf, sha, progress=bar)

            stage = "run"
            events.stage(stage)
            endpoints: list[str] = []
            for share in split.nodes:
                node = by_target[share.target]
                host = HEAD_LOOPBACK if share.role == "head" else share.address
                events.step(f"starting rpc-server on {share.target}, bound to {host} only")
                python = head_python if share.role == "head" else node.python
                srv = servers.add(rpc.start_server(share.target, node.transport, python, remote[share.target], host, share.threads,
                                                   f"{node.root}/runtime/rpc-cache"))
                endpoints.append(srv.endpoint)
            from toolchain.deploy.package import package

            bundle = package(plan, gguf, run_dir / "bundle", python=head_python, model_sha256=sha, extra_settings={
                "rpc_servers": endpoints, "tensor_split": list(split.tensor_split), "n_gpu_layers": split.n_gpu_layers,
                "lib_dir": remote[head.facts.target],
                # the weights are read into the servers' buffers, not mapped: a mapped file would count in
                # the runner's resident memory (VmHWM) as all of the model, which the head does not hold
                "use_mmap": False})
            release = replace(shipper.install_release(bundle), model_bytes_sent=sent, model_already_present=present)
            before = _counters(split, by_target)
            from toolchain.deploy.run import run_bench

            events.step(f"running release {release.id} on {head.spec.name} across {len(split.nodes)} boards")
            own = next(x for x in servers.servers if x.node == head.facts.target)
            own_cpu = own.cpu_s()
            outcome = run_bench(head.transport, release, python=head_python, run_dir=run_dir)
            own_cpu = own.cpu_s() - own_cpu
            nodes_tel = _node_telemetry(split, by_target, servers, before, outcome.telemetry)
            down = [s.node for s in servers.servers if s.node != head.facts.target and not s.alive()]
            if outcome.telemetry is None:
                verdict = failed_run_verdict(outcome.error or "runner failed")
                if down:  # a worker's server gone mid-run: the group's infrastructure, not the model
                    raise TargetError(f"rpc-server on {', '.join(down)} stopped during the run: {outcome.error}",
                                      "check the worker (memory, network); the runner's log is in the run directory")
                error_cls = RunnerOutOfMemory if outcome.failure_kind == "oom" else RunnerFailed
                raise error_cls(outcome.error or "runner failed", "see the run's report.md and runner.log.tail",
                                kind=outcome.failure_kind, log_tail=outcome.log_tail)
            # the head's own rpc-server runs its layers: its CPU time is the run's, not other load
            tel = outcome.telemetry
            if tel.other_cpu_s is not None:
                tel = replace(tel, other_cpu_s=max(0.0, tel.other_cpu_s - own_cpu))
            stage = "validate"
            events.stage(stage)
            verdict = validate_split(tel, plan, split, nodes_tel, sha, strict_prediction=request.strict_prediction)
            if verdict.passed or request.force:
                shipper.activate(release.id)
                release = replace(release, activated=True)
            if not verdict.passed:
                failed = ", ".join(c.name for c in verdict.checks if not c.passed and c.severity == "error")
                raise VerdictFailed(f"validation failed: {failed}", f"see {run_dir / 'report.md'}")
        except EdgeDeployError as exc:
            _teardown(servers, events)
            rep = report(Failure.of(exc, stage))
            write_reports(rep)
            events.log(f"report: {run_dir / 'report.md'}")
            raise ShipFailed(exc, rep) from exc
        except Exception as exc:  # a bug: reported as one
            _teardown(servers, events)
            internal = InternalError.wrap(exc)
            rep = report(Failure.of(internal, stage))
            write_reports(rep)
            raise ShipFailed(internal, rep) from exc
        finally:
            _teardown(servers, events)  # also on Ctrl-C: no rpc-server outlives the ship
    rep = report()
    write_reports(rep)
    events.log(f"report: {run_dir / 'report.md'}")
    return rep


def _teardown(servers: rpc.RpcServers, events: Events) -> None:
    if not servers.servers:
        return
    left = servers.stop_all()
    if left:
        events.log(f"  warning: rpc-server still running on {', '.join(left)}; stop it by hand (it has no authentication)")
    else:
        events.log("  rpc-servers stopped")


def _probe(specs: list[TargetSpec], conns: list[Transport], request: DeployRequest, events: Events) -> list[Node]:
    from toolchain.probe.reach import deploy_root, target_python

    out = []
    for i, (s, t) in enumerate(zip(specs, conns, strict=True)):
        root = deploy_root(s, t, request.deploy_dir if i == 0 else None)
        facts = probe_for_plan(s, t, events, root)
        out.append(Node(s, t, facts, root, target_python(s, facts)))
    return out


def probe_for_plan(spec: TargetSpec, transport: Transport, events: Events, root: str | None = None) -> HostFacts:
    """A quick probe when the device's stored measurements carry what the plan needs (its read
    rate), else a full one: a group plan probes every board and should not measure what is known."""
    from toolchain.plan import calibration
    from toolchain.probe.reach import deploy_root, probe_target

    root = root or deploy_root(spec, transport)
    facts = probe_target(spec, transport, root, events, quick=True)
    if any(r.bandwidth_bytes_per_s > 0 for r in calibration.load(calibration.fingerprint(facts))):
        return facts
    return probe_target(spec, transport, root, events)


def _provision_head(head: Node, request: DeployRequest, events: Events) -> str:
    from toolchain.deploy.provision import Provisioner

    prov = Provisioner(head.transport, head.root, log=events.log, offline=request.options.offline_wheels or request.plan.offline is True)
    return prov.ensure(head.python).python


def _push_builds(nodes: list[Node], head_python: str, events: Events) -> dict[str, str]:
    """The RPC build of each node's kind, on each node: {target: remote folder}."""
    from toolchain.deploy.provision import inspect_python

    out = {}
    for i, n in enumerate(nodes):
        python = head_python if i == 0 else n.python
        rt = inspect_python(n.transport, python)
        if rt is None:
            raise TargetError(f"{n.spec.name}: {python} does not run there", "a worker needs Python 3 for its probe and its rpc-server's checks")
        local = rpc.ensure_build(rt, events.log)
        out[n.facts.target] = rpc.push(n.transport, n.root, rt.key, local, events.log)
    return out


def _counters(split: SplitPlacement, by_target: dict[str, Node]) -> dict[str, tuple[str, int, int]]:
    out = {}
    for share in split.nodes:
        if share.role == "worker":
            node = by_target[share.target]
            got = rpc.link_counters(node.transport, node.python, share.address)
            if got is not None:
                out[share.target] = got
    return out


def _node_telemetry(split: SplitPlacement, by_target: dict[str, Node], servers: rpc.RpcServers,
                    before: dict[str, tuple[str, int, int]], tel: Telemetry | None) -> list[NodeTelemetry]:
    after = _counters(split, by_target)
    server_of = {s.node: s for s in servers.servers}
    out = []
    for share in split.nodes:
        s = server_of.get(share.target)
        peak = (s.peak_memory_bytes() or 0) if s is not None else 0
        if share.role == "head":
            peak += tel.peak_rss_bytes if tel is not None else 0
        b, a = before.get(share.target), after.get(share.target)
        rx, tx = (a[1] - b[1], a[2] - b[2]) if a and b else (0, 0)
        out.append(NodeTelemetry(target=share.target, role=share.role, layer_count=share.layer_count, endpoint=s.endpoint if s else "",
                                 peak_memory_bytes=peak, share_memory_bytes=share.memory_bytes,
                                 usable_memory_bytes=share.usable_memory_bytes, link_interface=a[0] if a else "",
                                 link_rx_bytes=rx, link_tx_bytes=tx))
    return out


def validate_split(tel: Telemetry, plan: Plan, split: SplitPlacement, nodes: list[NodeTelemetry], sha: str, *,
                   strict_prediction: bool = False) -> Verdict:
    """The one-board checks that hold for a split (telemetry, integrity, the budget and the split's
    predicted speed), then per node: its peak memory within its usable memory (error) and near its
    planned share (warning), the layers it was given really placed on it (llama.cpp's offload
    count, a server that held memory)."""
    sel = plan.selected
    assert sel is not None
    head_share = next(n for n in split.nodes if n.role == "head")
    base = validate(tel, sel, plan.budget, usable_memory_bytes=head_share.usable_memory_bytes, shipped_sha256=sha,
                    strict_prediction=strict_prediction)
    keep = ("telemetry measured", "model integrity", "decode budget", "prediction decode", "quiet board")
    checks = [c for c in base.checks if c.name in keep]
    checks.append(Check("split placement", tel.gpu_layers_offloaded == split.n_gpu_layers, f"{tel.gpu_layers_offloaded} slots on RPC devices",
                        f"{split.n_gpu_layers} ({'/'.join(str(x) for x in split.tensor_split)})",
                        "llama.cpp's offload count: every repeating layer and the output on the planned rpc-servers"))
    sev = "error" if strict_prediction else "warning"
    for n in nodes:
        checks.append(Check(f"memory {n.target}", 0 < n.peak_memory_bytes <= n.usable_memory_bytes, n.peak_memory_bytes, n.usable_memory_bytes,
                            f"{n.role}: peak resident memory (VmHWM{' of the runner and its rpc-server' if n.role == 'head' else ' of rpc-server'}) "
                            "vs its usable memory"))
        err = abs(n.peak_memory_bytes - n.share_memory_bytes) / n.share_memory_bytes if n.share_memory_bytes else 1.0
        checks.append(Check(f"prediction memory {n.target}", err <= MEMORY_TOLERANCE, n.peak_memory_bytes, n.share_memory_bytes,
                            f"measured vs planned share ({n.layer_count} layers): {err:.0%} off (tolerance {MEMORY_TOLERANCE:.0%})", sev))
        if n.role == "worker":
            checks.append(Check(f"link {n.target}", n.link_rx_bytes > 0 and n.link_tx_bytes > 0, n.link_rx_bytes + n.link_tx_bytes, "> 0",
                                f"bytes on {n.link_interface or 'its interface'} during the run ({n.link_rx_bytes} in, {n.link_tx_bytes} out)"))
    return Verdict(passed=all(c.passed for c in checks if c.severity == "error"), checks=checks)
