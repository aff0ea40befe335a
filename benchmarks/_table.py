"""The table every benchmark prints: one row per case, seconds, and its baseline or note."""


def print_table(title: str, rows: list[tuple[str, float, str]]) -> None:
    print(f"# {title}")
    width = max(len(r[0]) for r in rows)
    print(f"{'case'.ljust(width)} | seconds | baseline / note")
    print(f"{'-' * width}-|---------|----------------")
    for name, seconds, note in rows:
        print(f"{name.ljust(width)} | {seconds:7.3f} | {note}")
