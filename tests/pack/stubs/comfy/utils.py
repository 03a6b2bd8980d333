"""Stand-in for comfy.utils: a ProgressBar that records every update in UPDATES."""

UPDATES: list[tuple[int, int]] = []


class ProgressBar:
    def __init__(self, total, node_id=None) -> None:
        self.total = total
        self.current = 0

    def update_absolute(self, value, total=None, preview=None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        UPDATES.append((self.current, self.total))

    def update(self, value) -> None:
        self.update_absolute(self.current + value)
