"""The container view used again: switched to another image in place (vocker remount) or
emptied between two runs (warm mounts). A mixin of vocker.view.ContainerView."""

from __future__ import annotations

import os
import shutil
import stat

from .imagelayer import Parts
from .inodes import LinkIndex
from .manifest import Manifest
from .tree import Kind
from .viewtypes import (
    LowerHandle,
    UpperHandle,
)


class Reuse:
    """Another image under the same writable layer, or a pristine view again."""

    # -- another image (remount) -------------------------------------------------

    def open_image_files(self) -> set[Parts]:
        """The image files some handle is reading (not copied up): what a remount must keep."""
        return {h.parts for h in list(self._handles.values()) if isinstance(h, LowerHandle) and h.upper_fd < 0}

    def replace_image(self, manifest: Manifest) -> None:
        """Show another image (same Python) under the same writable layer from now on. Open
        handles keep the nodes they opened; every memoised lookup goes."""
        with self._mutating():
            self.image.replace_stack(manifest)
            self.manifest = manifest
            self.recorder = None  # what is read now is another image's start-up
            self._forget_all()

    # -- reuse (warm mounts) -----------------------------------------------------

    def discard_changes(self) -> list[tuple[Parts, bool]] | None:
        """Empty the writable layer, so that the view is the pristine image again (a warm mount
        between two runs); None, changing nothing, while a file of that layer is open.

        Returns what the kernel may hold stale, for the driver to drop: ``(parts, True)`` for a
        name whose entry changed (created, deleted, replaced, a file written: its dentry, and
        what is below it, must go), ``(parts, False)`` for a directory of the image that only
        had something changed inside (its attributes and listing go; its cached subtree stays).
        """
        if self.upper is None:
            return []
        with self._mutating():
            if any(isinstance(h, UpperHandle) or h.upper_fd >= 0 for h in self._handles.values()):
                return None
            changes: list[tuple[Parts, bool]] = [((), False)]
            self._changed_below((), changes)
            for fd, where in ((self._ufd, self.upper), (self._wfd, self.work)):
                assert where is not None
                for name in os.listdir(fd):
                    if stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                        shutil.rmtree(where / name)
                    else:
                        os.unlink(name, dir_fd=fd)
            os.chmod(self._ufd, 0o755)  # the root's mode, as containers.create_throwaway made it
            self._upper_dirs.clear()
            self._forget_all()
            self._links = LinkIndex(self._ufd)
        return changes

    def _changed_below(self, parts: Parts, changes: list[tuple[Parts, bool]]) -> None:
        """Add what the upper directory at ``parts`` changed (see discard_changes)."""
        ud = self._upper_dir(parts)
        assert ud is not None
        changes.extend((parts + (name,), True) for name in sorted(ud.whiteouts))
        for name in sorted(ud.names):
            child = parts + (name,)
            lower = self.image.node(child)
            if (self._upper_dir(child) is not None and lower is not None and lower.kind is Kind.DIR
                    and not self._upper_dir(child).opaque):  # type: ignore[union-attr]
                changes.append((child, False))
                self._changed_below(child, changes)
            else:
                changes.append((child, True))
