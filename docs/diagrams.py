"""The picture at the top of each chapter, drawn from one description.

Each chapter is a ``Scene``: which boxes exist, where the traffic goes (and
how much of it), which database owns billing's records, which way the data
flows, and a caption. ``render`` turns a scene into plain SVG, laid out the
same way every time, so the pictures read as one story:

    client -> proxy -> monolith / billing service,  each beside its database

``make diagrams`` writes ``docs/img/NN-*.svg``; a test fails when a committed
picture differs from what this file draws (change the scene here, not the SVG).
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path
from xml.sax.saxutils import escape

IMG = Path(__file__).resolve().parent / "img"
WIDTH, HEIGHT = 800, 350
#: A caption's line, in characters (11 px Helvetica is ~6 px a character).
CAPTION_CHARS = 120
FONT = "Helvetica, Arial, sans-serif"
INK = "#2b2b2b"
MUTED = "#8a8a8a"
COLOURS = {
    "client": "#f2f2f2",
    "proxy": "#fde4c3",
    "monolith": "#dbe7f6",
    "service": "#d9f0dc",
    "owner": "#7fb77e",
    "copy": "#ffffff",
    "traffic": "#2b2b2b",
    "data": "#7a4fb5",
    "events": "#1f8a8a",
    "fence": "#c0392b",
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """Where traffic and billing's data are at one step of the journey."""

    number: int
    slug: str
    title: str
    caption: str
    proxy: bool = True
    service: bool = True
    #: Billing's code in the monolith: "module" (inside), "port" (a port to
    #: the service beside it), "gone" (decommissioned).
    monolith_billing: str = "module"
    #: Dashed module boundaries (chapter 1 is about them).
    boundaries: bool = False
    #: Labels of the traffic arrows; None draws no arrow.
    to_monolith: str | None = "all traffic"
    to_service: str | None = None
    #: A dashed arrow: traffic the service may get but does not (yet).
    service_dashed: bool = False
    #: What each database holds of billing: "owner", "copy", "empty", "shared", "gone".
    monolith_data: str = "owner"
    service_data: str = "empty"
    #: Data sync arrows between the databases: label or None.
    data_down: str | None = None  # monolith -> service
    data_up: str | None = None  # service -> monolith
    #: Events and calls across the network between the two apps.
    events_up: str | None = None  # service -> monolith
    calls_down: str | None = None  # monolith -> service
    #: A note beside the proxy (the fence, a gate).
    proxy_note: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.number:02d}-{self.slug}.svg"


SCENES = (
    Scene(
        1,
        "the-monolith",
        "The monolith",
        "One deployable, one database; users, billing and notifications keep to "
        "their boundaries. Billing is what we will extract.",
        proxy=False,
        service=False,
        boundaries=True,
    ),
    Scene(
        2,
        "put-the-proxy-in-front",
        "Put the proxy in front",
        "Every client talks to the proxy; route by route it decides who answers. "
        "For now: the monolith, for everything.",
        service=False,
    ),
    Scene(
        3,
        "extract-the-code",
        "Extract the code",
        "Billing's code runs as a service with its own, empty database and the same "
        "HTTP contract. No traffic reaches it yet.",
        to_service="can route here",
        service_dashed=True,
    ),
    Scene(
        4,
        "the-port-and-its-adapters",
        "The port and its adapters",
        "Inside the monolith, users reaches billing through a port: in-process, "
        "or an HTTP adapter to the service.",
        monolith_billing="port",
        calls_down="billing port (HTTP)",
        to_service="can route here",
        service_dashed=True,
    ),
    Scene(
        5,
        "events-across-the-network",
        "Events across the network",
        "Each side publishes from its outbox; a relay delivers, signed, at least once; "
        "each inbox handles an event once.",
        monolith_billing="port",
        events_up="events (outbox, relay)",
        calls_down="UserDeactivated",
        to_service="can route here",
        service_dashed=True,
    ),
    Scene(
        6,
        "copy-and-verify-the-data",
        "Copy and verify the data (and shadow)",
        "The mover copies billing's rows, applies every captured change and proves "
        "the copy; shadow compares the service's answers with the monolith's.",
        monolith_billing="port",
        to_service="shadow copy (compared)",
        service_dashed=True,
        service_data="copy",
        data_down="copy + changes",
    ),
    Scene(
        7,
        "canary-user-by-user",
        "Canary, user by user",
        "A user's records have one writer: the side their bucket points to. "
        "Both streams keep each database a complete copy of the other's records.",
        monolith_billing="port",
        to_monolith="buckets 50-99",
        to_service="buckets 0-49",
        monolith_data="shared",
        service_data="shared",
        data_down="changes",
        data_up="changes",
        proxy_note="fence: writes held while buckets move",
    ),
    Scene(
        8,
        "cut-over",
        "Cut-over",
        "The service owns every record, plans included. The sync turns around: the "
        "monolith stays a complete, proved copy, ready for a rollback.",
        monolith_billing="port",
        to_monolith=None,
        to_service="all billing traffic",
        monolith_data="copy",
        service_data="owner",
        data_up="changes",
        proxy_note="gate: the reverse stream's lag",
    ),
    Scene(
        9,
        "rollback-under-load",
        "Rollback under load",
        "The same fence brings ownership back: writes wait a moment, the reverse "
        "stream drains, the monolith owns again. No write is lost.",
        monolith_billing="port",
        to_monolith="all billing traffic",
        to_service=None,
        monolith_data="owner",
        service_data="copy",
        data_down="changes",
        data_up="drained first",
        proxy_note="fence: writes held, then back",
    ),
    Scene(
        10,
        "decommission",
        "Decommission",
        "The monolith's billing code and tables go; the service is billing. "
        "The proxy keeps its place for the next extraction.",
        monolith_billing="gone",
        to_monolith="everything else",
        to_service="all billing traffic",
        monolith_data="gone",
        service_data="owner",
    ),
)

# -- drawing ---------------------------------------------------------------------

CLIENT = (20, 135, 100, 50)
PROXY = (170, 135, 120, 50)
MONOLITH = (360, 20, 220, 125)
SERVICE = (360, 195, 220, 85)
MONOLITH_DB = (630, 30, 110, 95)
SERVICE_DB = (630, 190, 110, 95)


def text(x: float, y: float, body: str, size: int = 12, **attrs: str) -> str:
    """A line of text; ``attrs`` are SVG attributes, ``_`` for ``-`` (text_anchor)."""
    attrs.setdefault("fill", INK)
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return (
        f'<text x="{x:g}" y="{y:g}" font-size="{size}" font-family="{FONT}"{extra}>'
        f"{escape(body)}</text>"
    )


def box(
    frame: tuple[int, int, int, int], fill: str, title: str, *, dashed: bool = False
) -> list[str]:
    x, y, w, h = frame
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return [
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" '
        f'stroke="{INK}" stroke-width="1.5"{dash}/>',
        text(x + w / 2, y + 20, title, 14, text_anchor="middle", font_weight="bold"),
    ]


def module(x: float, y: float, w: float, name: str, *, dashed: bool, gone: bool) -> list[str]:
    stroke = MUTED if gone else INK
    dash = ' stroke-dasharray="4 3"' if dashed or gone else ""
    parts = [
        f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="34" rx="4" fill="#ffffff" '
        f'stroke="{stroke}"{dash}/>',
        text(x + w / 2, y + 21, name, 11, text_anchor="middle", fill=stroke),
    ]
    if gone:
        parts.append(
            f'<line x1="{x + 4:g}" y1="{y + 30:g}" x2="{x + w - 4:g}" y2="{y + 4:g}" '
            f'stroke="{COLOURS["fence"]}" stroke-width="1.5"/>'
        )
    return parts


def database(frame: tuple[int, int, int, int], name: str, holds: str) -> list[str]:
    x, y, w, h = frame
    ry = 10
    fill = {"owner": COLOURS["owner"], "shared": "url(#half)"}.get(holds, "#ffffff")
    stroke = MUTED if holds in ("empty", "gone") else INK
    dash = ' stroke-dasharray="4 3"' if holds in ("copy", "empty", "gone") else ""
    label = {
        "owner": "owner",
        "copy": "a copy",
        "shared": "owner, by user",
        "empty": "empty",
        "gone": "dropped",
    }[holds]
    return [
        f'<path d="M{x},{y + ry} v{h - 2 * ry} a{w / 2:g},{ry} 0 0 0 {w},0 v{-(h - 2 * ry)}" '
        f'fill="#f7f7f7" stroke="{INK}" stroke-width="1.5"/>',
        f'<ellipse cx="{x + w / 2:g}" cy="{y + ry}" rx="{w / 2:g}" ry="{ry}" fill="#f7f7f7" '
        f'stroke="{INK}" stroke-width="1.5"/>',
        text(x + w / 2, y + 32, name, 12, text_anchor="middle", font_weight="bold"),
        text(x + w / 2, y + 47, "billing data", 10, text_anchor="middle", fill=MUTED),
        f'<rect x="{x + 10}" y="{y + 54}" width="{w - 20}" height="22" rx="4" fill="{fill}" '
        f'stroke="{stroke}"{dash}/>',
        text(x + w / 2, y + 69, label, 11, text_anchor="middle"),
    ]


def arrow(
    points: tuple[float, float, float, float],
    colour: str,
    label: str | None = None,
    *,
    dashed: bool = False,
    offset: tuple[float, float] = (0, -6),
    anchor: str = "middle",
) -> list[str]:
    x1, y1, x2, y2 = points
    name = next(k for k, v in COLOURS.items() if v == colour)
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    parts = [
        f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="{colour}" '
        f'stroke-width="2"{dash} marker-end="url(#head-{name})"/>'
    ]
    if label:
        lx, ly = (x1 + x2) / 2 + offset[0], (y1 + y2) / 2 + offset[1]
        parts.append(text(lx, ly, label, 11, text_anchor=anchor, fill=colour))
    return parts


def render(scene: Scene) -> str:
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f"<title>{escape(f'{scene.number}. {scene.title}: {scene.caption}')}</title>",
        "<defs>",
        *(
            f'<marker id="head-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{colour}"/></marker>'
            for name, colour in COLOURS.items()
            if name in ("traffic", "data", "events")
        ),
        '<linearGradient id="half" x1="0" x2="1" y1="0" y2="0">'
        f'<stop offset="0.5" stop-color="{COLOURS["owner"]}"/>'
        '<stop offset="0.5" stop-color="#ffffff"/></linearGradient>',
        "</defs>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    parts += box(CLIENT, COLOURS["client"], "client")
    parts.append(text(70, 176, "users (X-User-ID)", 10, text_anchor="middle", fill=MUTED))

    # The apps, their modules and their databases.
    parts += box(MONOLITH, COLOURS["monolith"], "monolith")
    dashed = scene.boundaries
    parts += module(372, 56, 60, "users", dashed=dashed, gone=False)
    billing = {"module": "billing", "port": "billing port", "gone": "billing"}
    parts += module(
        440,
        56,
        64,
        billing[scene.monolith_billing],
        dashed=dashed,
        gone=scene.monolith_billing == "gone",
    )
    parts += module(512, 56, 60, "notify", dashed=dashed, gone=False)
    if scene.boundaries:
        parts.append(
            text(
                470,
                120,
                "modules meet only through api.py and events.py",
                10,
                text_anchor="middle",
                fill=MUTED,
            )
        )
    parts += database(MONOLITH_DB, "monolith db", scene.monolith_data)
    parts.append(f'<line x1="580" y1="78" x2="630" y2="78" stroke="{INK}" stroke-width="1.5"/>')
    if scene.service:
        parts += box(SERVICE, COLOURS["service"], "billing service")
        parts += module(430, 228, 80, "billing", dashed=False, gone=False)
        parts += database(SERVICE_DB, "service db", scene.service_data)
        parts.append(
            f'<line x1="580" y1="238" x2="630" y2="238" stroke="{INK}" stroke-width="1.5"/>'
        )

    # Traffic.
    if scene.proxy:
        parts += box(PROXY, COLOURS["proxy"], "proxy")
        parts.append(text(230, 176, "/_strangler/", 10, text_anchor="middle", fill=MUTED))
        parts += arrow((120, 160, 168, 160), COLOURS["traffic"])
        if scene.to_monolith:
            parts += arrow(
                (290, 148, 358, 100),
                COLOURS["traffic"],
                scene.to_monolith,
                offset=(-6, -8),
                anchor="end",
            )
        if scene.to_service:
            parts += arrow(
                (290, 172, 358, 228),
                COLOURS["traffic"],
                scene.to_service,
                dashed=scene.service_dashed,
                offset=(-8, 16),
                anchor="end",
            )
        if scene.proxy_note:
            parts.append(text(20, 236, scene.proxy_note, 11, fill=COLOURS["fence"]))
    else:
        parts += arrow((120, 152, 358, 100), COLOURS["traffic"], scene.to_monolith, offset=(0, -12))

    # Across the network, between the apps.
    # One label a line, between the two arrows, with the arrow's direction.
    if scene.calls_down:
        parts += arrow((385, 147, 385, 193), COLOURS["events"])
        parts.append(
            text(
                470,
                164,
                f"\u2193 {scene.calls_down}",
                11,
                text_anchor="middle",
                fill=COLOURS["events"],
            )
        )
    if scene.events_up:
        parts += arrow((555, 193, 555, 147), COLOURS["events"])
        parts.append(
            text(
                470,
                184,
                f"\u2191 {scene.events_up}",
                11,
                text_anchor="middle",
                fill=COLOURS["events"],
            )
        )

    # Data between the databases.
    if scene.data_down:
        parts += arrow(
            (668, 127, 668, 188), COLOURS["data"], scene.data_down, offset=(-8, 4), anchor="end"
        )
    if scene.data_up:
        parts += arrow(
            (702, 188, 702, 127), COLOURS["data"], scene.data_up, offset=(8, 4), anchor="start"
        )

    parts.append(text(20, 304, f"{scene.number}. {scene.title}", 13, font_weight="bold"))
    for n, line in enumerate(textwrap.wrap(scene.caption, CAPTION_CHARS)):
        parts.append(text(20, 320 + 14 * n, line, 11))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def drawn() -> dict[Path, str]:
    """Every picture, by the path it belongs at."""
    return {IMG / scene.filename: render(scene) for scene in SCENES}


def main() -> int:
    IMG.mkdir(exist_ok=True)
    for path, svg in drawn().items():
        if not path.exists() or path.read_text() != svg:
            path.write_text(svg)
            print(f"wrote {path.relative_to(IMG.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
