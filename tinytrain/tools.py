"""The external tools a board needs (cross compiler, QEMU): found on PATH, or one
line saying which packages to install.  A leaf shared by boards.py (build) and
qemu.py (run), so neither imports the other's caller."""
import shutil

from .compiler.errors import TinytrainError

APT_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"


def install_hint(board=None):
    apt = (board or {}).get("apt", APT_PACKAGES)
    return f"install it with: apt-get install -y --no-install-recommends {apt}"


def require_tool(tool, board=None):
    path = shutil.which(tool)
    if path is None:
        raise TinytrainError(f"{tool} not found: {install_hint(board)}")
    return path
