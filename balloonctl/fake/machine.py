"""QMP commands of the fake machine, and its QOM tree, with QEMU 7.2's error messages.

``Machine.execute(name, args)`` returns the ``return`` value or raises ``QMPError``.
Capabilities negotiation, ``quit`` and fault injection belong to the server, not here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from balloonctl.fake.device import BalloonDevice
from balloonctl.fake.wire import QMPError, check_args

__all__ = ["QEMU_VERSION", "Machine"]

QEMU_VERSION: dict[str, Any] = {
    "qemu": {"micro": 22, "minor": 2, "major": 7},
    "package": "Debian 1:7.2+dfsg-7+deb12u7",
}

# Host thread ids for the vCPU of each boot: like a new QEMU process's, never the same twice.
_THREAD_IDS = itertools.count(40000)

PCI_TYPE = "virtio-balloon-pci"
BACKEND_TYPE = "virtio-balloon-device"
PERMISSION_DENIED = "Insufficient permission to perform this operation"


class _Prop:
    """One QOM property: its QOM type name, a getter and (if writable) a setter."""

    __slots__ = ("getter", "kind", "setter")

    def __init__(
        self,
        kind: str,
        getter: Callable[[], Any],
        setter: Callable[[Any], None] | None = None,
    ) -> None:
        self.kind = kind
        self.getter = getter
        self.setter = setter


class _Node:
    """One QOM object: a type name, child objects and properties."""

    __slots__ = ("children", "path", "props", "typename")

    def __init__(self, typename: str) -> None:
        self.typename = typename
        self.path = ""  # canonical path, set when the tree is indexed
        self.children: dict[str, _Node] = {}
        self.props: dict[str, _Prop] = {"type": _Prop("string", lambda: typename)}

    def add(self, name: str, child: _Node) -> _Node:
        self.children[name] = child
        return child

    def listing(self) -> list[dict[str, str]]:
        out = [{"name": name, "type": p.kind} for name, p in self.props.items()]
        for name, child in self.children.items():
            out.append({"name": name, "type": f"child<{child.typename}>"})
        return out


class Machine:
    """The QMP-visible machine around an optional balloon device."""

    def __init__(
        self,
        name: str,
        ram: int,
        device: BalloonDevice | None,
        *,
        agent: bool = False,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.ram = ram
        self.device = device
        self.clock = clock
        self.vcpu_thread_id = next(_THREAD_IDS)
        self._paths: dict[str, _Node] = {}
        self._build_tree(agent)
        self._commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "balloon": self._balloon,
            "query-balloon": self._query_balloon,
            "query-memory-size-summary": self._query_memory_size_summary,
            "query-status": self._query_status,
            "query-version": self._query_version,
            "query-name": self._query_name,
            "query-cpus-fast": self._query_cpus_fast,
            "query-commands": self._query_commands,
            "qom-list": self._qom_list,
            "qom-get": self._qom_get,
            "qom-set": self._qom_set,
        }

    @property
    def command_names(self) -> list[str]:
        return [*self._commands, "qmp_capabilities", "quit"]

    def execute(self, name: str, args: dict[str, Any]) -> Any:
        """Run one command.

        Raises:
            QMPError: the command is unknown or fails, with QEMU's class and message.
        """
        handler = self._commands.get(name)
        if handler is None:
            raise QMPError(f"The command {name} has not been found", "CommandNotFound")
        return handler(args)

    # --- the QOM tree ------------------------------------------------------------------

    def _build_tree(self, agent: bool) -> None:
        root = _Node("container")
        machine = root.add("machine", _Node("pc-q35-7.2-machine"))
        root.add("objects", _Node("container"))
        root.add("chardevs", _Node("container"))
        machine.add("unattached", _Node("container"))
        # QEMU creates these containers with the first device that has (or lacks) an id.
        anon = machine.add("peripheral-anon", _Node("container"))
        anon.add("device[0]", _Node("virtio-net-pci"))
        if agent:
            anon.add("device[1]", _Node("virtio-serial-pci"))
            anon.add("device[2]", _Node("virtserialport"))
        dev = self.device
        if dev is not None:
            if dev.device_id is not None:
                peripheral = machine.add("peripheral", _Node("container"))
                proxy = peripheral.add(dev.device_id, _Node(PCI_TYPE))
            else:
                proxy = anon.add(f"device[{len(anon.children)}]", _Node(PCI_TYPE))
            backend = proxy.add("virtio-backend", _Node(BACKEND_TYPE))
            self._balloon_props(proxy, dev)
            self._balloon_props(backend, dev)
        self._index(root, "")

    def _index(self, node: _Node, path: str) -> None:
        node.path = path or "/"
        self._paths[node.path] = node
        for name, child in node.children.items():
            self._index(child, f"{path}/{name}")

    def _balloon_props(self, node: _Node, dev: BalloonDevice) -> None:
        def fixed(name: str, get: Callable[[], bool]) -> _Prop:
            def refuse(_value: Any) -> None:
                # The PCI proxy forwards these to its anonymous virtio-balloon-device.
                raise QMPError(
                    f"Attempt to set property '{name}' on anonymous device "
                    f"(type '{BACKEND_TYPE}') after it was realized"
                )

            return _Prop("bool", get, refuse)

        def read_only(_value: Any) -> None:
            raise QMPError(PERMISSION_DENIED)

        props = node.props
        props["realized"] = _Prop("bool", lambda: True, read_only)
        props["hotpluggable"] = _Prop("bool", lambda: True, read_only)
        props["hotplugged"] = _Prop("bool", lambda: False, read_only)
        props["parent_bus"] = _Prop("link<bus>", lambda: "/machine/q35/pcie.0", read_only)
        props["guest-stats"] = _Prop("guest-statistics", dev.guest_stats, read_only)
        props["guest-stats-polling-interval"] = _Prop(
            "int", lambda: dev.polling_interval, self._set_polling_interval
        )
        props["deflate-on-oom"] = fixed("deflate-on-oom", lambda: dev.deflate_on_oom)
        props["free-page-hint"] = fixed("free-page-hint", lambda: dev.free_page_hint)
        props["free-page-reporting"] = fixed("free-page-reporting", lambda: dev.free_page_reporting)
        props["page-poison"] = fixed("page-poison", lambda: dev.page_poison)
        props["qemu-4-0-config-size"] = fixed("qemu-4-0-config-size", lambda: False)
        props["iothread"] = _Prop("link<iothread>", lambda: "", read_only)
        props["indirect_desc"] = fixed("indirect_desc", lambda: True)
        props["event_idx"] = fixed("event_idx", lambda: True)
        if dev.hint_device:
            props["reclaim-cache-first"] = _Prop("bool", lambda: dev.guest.hint, self._set_hint)

    def _set_polling_interval(self, value: Any) -> None:
        assert self.device is not None
        if not isinstance(value, int) or isinstance(value, bool):
            raise QMPError(
                "Invalid parameter type for 'guest-stats-polling-interval', expected: integer"
            )
        try:
            self.device.set_polling_interval(value, self.clock())
        except ValueError as exc:
            raise QMPError(str(exc)) from None

    def _set_hint(self, value: Any) -> None:
        assert self.device is not None
        if not isinstance(value, bool):
            raise QMPError("Invalid parameter type for 'reclaim-cache-first', expected: boolean")
        self.device.guest.hint = value

    def _resolve(self, path: str) -> _Node:
        """QEMU's object_resolve_path: absolute, or a partial path matching one object.

        Raises:
            QMPError: DeviceNotFound.
        """
        node = self._paths.get(path.rstrip("/") or "/") if path.startswith("/") else None
        if node is None and path and not path.startswith("/"):
            matches = [n for p, n in self._paths.items() if p.endswith("/" + path)]
            if len(matches) == 1:
                node = matches[0]
        if node is None:
            raise QMPError(f"Device '{path}' not found", "DeviceNotFound")
        return node

    def _prop(self, node: _Node, name: str) -> _Prop:
        prop = node.props.get(name)
        if prop is None:
            raise QMPError(f"Property '{node.typename}.{name}' not found")
        return prop

    # --- commands ----------------------------------------------------------------------

    def _need_balloon(self) -> BalloonDevice:
        if self.device is None:
            raise QMPError("No balloon device has been activated", "DeviceNotActive")
        return self.device

    def _balloon(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {"value": int})
        dev = self._need_balloon()
        value: int = args["value"]
        if value <= 0:
            raise QMPError("Parameter 'target' expects a size")
        dev.set_target(value)
        return {}

    def _query_balloon(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {})
        return {"actual": self._need_balloon().guest.actual}

    def _query_memory_size_summary(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {})
        return {"base-memory": self.ram, "plugged-memory": 0}

    def _query_status(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {})
        return {"status": "running", "singlestep": False, "running": True}

    def _query_version(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {})
        return QEMU_VERSION

    def boot(self) -> None:
        """A new QEMU process: the vCPU runs in a new host thread."""
        self.vcpu_thread_id = next(_THREAD_IDS)

    def _query_cpus_fast(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        check_args(args, {})
        return [{"cpu-index": 0, "thread-id": self.vcpu_thread_id, "target": "x86_64",
                 "qom-path": "/machine/unattached/device[0]",
                 "props": {"core-id": 0, "thread-id": 0, "node-id": 0, "socket-id": 0}}]

    def _query_name(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {})
        return {"name": self.name}

    def _query_commands(self, args: dict[str, Any]) -> list[dict[str, str]]:
        check_args(args, {})
        return [{"name": n} for n in self.command_names]

    def _qom_list(self, args: dict[str, Any]) -> list[dict[str, str]]:
        check_args(args, {"path": str})
        return self._resolve(args["path"]).listing()

    def _qom_get(self, args: dict[str, Any]) -> Any:
        check_args(args, {"path": str, "property": str})
        node = self._resolve(args["path"])
        name: str = args["property"]
        child = node.children.get(name)
        if child is not None:
            return child.path
        return self._prop(node, name).getter()

    def _qom_set(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {"path": str, "property": str, "value": object})
        node = self._resolve(args["path"])
        name: str = args["property"]
        if name in node.children:
            raise QMPError(PERMISSION_DENIED)
        prop = self._prop(node, name)
        if prop.setter is None:
            raise QMPError(PERMISSION_DENIED)
        prop.setter(args["value"])
        return {}
