"""What the process is doing now, so that a timeout can say where it got stuck."""

_current = "starting"


def doing(text: str) -> None:
    global _current
    _current = text


def current() -> str:
    return _current
