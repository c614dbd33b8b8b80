"""RSS 2.0 feeds of jobs (``/~USER/rss.xml``, ``/~USER/TAG/rss.xml``), as builds.sr.ht:
item title ``#<id> (<STATUS>)``, description the note, link and guid the job's page,
pubDate the job's last update."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from xml.etree import ElementTree as ET

__all__ = ["FeedItem", "rss_feed"]


@dataclass(frozen=True)
class FeedItem:
    job_id: int
    status: str
    note: str | None
    url: str
    updated: datetime


def rss_feed(title: str, link: str, description: str, items: Iterable[FeedItem]) -> bytes:
    """The feed as UTF-8 XML (ElementTree escapes every text)."""
    rss = ET.Element("rss", version="2.0")
    channel = ET.SubElement(rss, "channel")
    ET.SubElement(channel, "title").text = title
    ET.SubElement(channel, "link").text = link
    ET.SubElement(channel, "description").text = description
    for item in items:
        node = ET.SubElement(channel, "item")
        ET.SubElement(node, "title").text = f"#{item.job_id} ({item.status.upper()})"
        ET.SubElement(node, "description").text = item.note or ""
        ET.SubElement(node, "link").text = item.url
        ET.SubElement(node, "guid", isPermaLink="true").text = item.url
        ET.SubElement(node, "pubDate").text = format_datetime(item.updated, usegmt=True)
    body: bytes = ET.tostring(rss, encoding="utf-8", xml_declaration=True)
    return body
