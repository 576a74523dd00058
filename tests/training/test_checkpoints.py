import os

from components.training.checkpoints import prune, read_done, run_dir, write_done


def test_prune_keeps_the_newest_runs_of_the_same_name_and_the_current_one(tmp_path):
    old = [run_dir(tmp_path, "deep", f"{i:016x}") for i in range(5)]
    for age, path in enumerate(old):
        os.utime(path, (1_000_000 + age, 1_000_000 + age))  # old[4] is the newest
    other_kind = run_dir(tmp_path, "logreg", "0" * 16)
    os.utime(other_kind, (1, 1))  # oldest of all, but another name
    current = run_dir(tmp_path, "deep", "f" * 16)

    removed = prune(current, keep=3)

    assert sorted(removed) == sorted(old[:3])
    assert {p.name for p in tmp_path.iterdir()} == {current.name, old[4].name, old[3].name, other_kind.name}


def test_a_run_is_done_only_once_its_record_is_complete(tmp_path):
    path = run_dir(tmp_path, "generator", "a" * 16)
    assert read_done(path) is None
    write_done(path, {"best_checkpoint": "x.ckpt", "best_val_loss": 5.4})
    assert read_done(path) == {"best_checkpoint": "x.ckpt", "best_val_loss": 5.4}
    assert not list(path.glob("*.tmp"))
