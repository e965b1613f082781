"""Progress: lines for phases, a tqdm bar only on a terminal."""
import io

from pytest_kvm.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_terminal_no_bar_and_phases_are_lines():
    lines, stream = [], io.StringIO()
    progress = Progress(lines.append, stream)
    progress("building x")
    with progress.bar("downloading x", 100) as bar:
        for done in range(0, 101, 10):
            bar.update(done, 100)
    assert lines == ["building x"] and stream.getvalue() == ""
    assert bar.done == 100


def test_a_terminal_gets_a_bar():
    stream = Terminal()
    with Progress(stream=stream).bar("downloading x") as bar:
        bar.update(2**20, 4 * 2**20)
        bar.describe("from the mirror")
        bar.update(4 * 2**20, 4 * 2**20)
    text = stream.getvalue()
    assert "downloading x" in text and "100%" in text and "4.00M" in text


def test_a_plain_callable_is_wrapped():
    lines = []
    progress = Progress.of(lines.append)
    progress("one")
    assert lines == ["one"] and Progress.of(progress) is progress and not progress.draws_bars
