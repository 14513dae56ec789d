"""Progress bars in a log file: a line per update, no carriage-return redraws."""
from vitkit.progress import progress


def test_off_a_terminal_each_update_is_a_line_and_a_cleared_bar_leaves_nothing(capsys):
    for _ in progress(range(3), desc="epoch 1/1", mininterval=0, miniters=1, leave=False):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("epoch 1/1:") for line in lines)
    assert "3/3" in lines[-1]
