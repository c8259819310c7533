"""The package's one atomic-write helper: a file is replaced whole or not at all, its temporary never stays."""
import errno

import pytest

from samhw.fileio import StorageError, atomic_write, atomic_write_text, storage_errors, temporary_path


def test_a_failed_or_interrupted_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "sub" / "log.json"
    atomic_write_text(path, "old")
    for error in (ValueError("the writer failed"), KeyboardInterrupt()):
        def write(handle, error=error):
            handle.write(b"half")
            raise error

        with pytest.raises(type(error)):
            atomic_write(path, write)
        assert path.read_text() == "old" and not temporary_path(path).exists()
        assert [p.name for p in path.parent.iterdir()] == ["log.json"]


def test_storage_errors_name_the_folder_and_the_fix_and_let_other_errors_pass(tmp_path):
    path = tmp_path / "rows.csv"
    with pytest.raises(StorageError, match=rf"cannot write rows.csv in {tmp_path} \(no space left on the device\): "
                                           "free space there"):
        with storage_errors(path):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(StorageError, match="read-only.*choose a writable folder"):
        with storage_errors(path):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(FileNotFoundError):
        with storage_errors(path):
            raise FileNotFoundError(errno.ENOENT, "No such file")
    import pickle

    error = pickle.loads(pickle.dumps(StorageError("message", "/x")))  # it crosses from worker processes
    assert str(error) == "message" and error.path == "/x"
