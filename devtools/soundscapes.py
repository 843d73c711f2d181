"""Borneo soundscapes and a real PortAudio input device without sound hardware, for the listen tests,
bench/listen_load.py and scripts/choose_listen_soundscapes.py.

A user-mode PulseAudio server with a null sink ``virt``: what ``paplay -d virt`` plays comes back
on the sink's monitor, which PortAudio's ALSA device ``pulse`` records when ``PULSE_SOURCE`` is
``virt.monitor``. Needs Debian's ``pulseaudio``, ``pulseaudio-utils``, ``libportaudio2`` and
``libasound2-plugins`` (scripts/setup-dev.sh installs them).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATE = 16000

# Soundscapes from Borneo test clips: background, call, background, ... The shipped bundle finds
# exactly these calls and nothing else, starting within 2.5 s of the truth (an event starts where
# its first 4 s window does; the live test allows 3 s), at every phase of its 2 s window grid
# (eight tried), on the clips as they are and after a simulated sound-server path (48 kHz, 16-bit,
# 44.1 kHz, back to 16 kHz, at full and 80 % gain). `python scripts/choose_listen_soundscapes.py`
# applies that criterion to every test clip; run it when the default bundle changes. For the
# pool pair at its hysteresis point for 30 false events per hour (default-58685ae8fd60): 50 of 52
# background clips stay silent, and 1 of 37 duets, 1 of 15 great argus, 1 of 10 helmeted and 0 of 4
# rhinoceros hornbill clips pass (the others fail at some phase or path: too early, split in two,
# too short for the operating point's evidence, or another label). (The earlier centred-band
# log-mel + PCEN pair: 46 of 52; 3, 2, 4 and 0.) Which calls pass depends on the clips around
# them: the hysteresis point extends an event back over the windows that only begin to hear the
# call, so some start 2.4 s early. The calls below were chosen between these very background clips,
# where every one starts within 2 s (the listener tests' tolerance, one hop) at every phase and path.
PART_A = ("noise_S11_20180320_080003_1164.92431378014_1171.3249978531_.flac",
          "duet_S18_20180306_080003_3959.65437556006_3967.23918618653_.flac",
          "noise_S12_20180219_100003_3090.82570699541_3099.40262365319_.flac",
          "long.argus_S11_20180330_060002_1892.58589511548_1900.81077414924_.flac",
          "noise_S11_20180320_080003_1144.15409396336_1152.85902430259_.flac")
PART_B = ("noise_S11_20180320_080003_1164.92431378014_1171.3249978531_.flac",
          "duet_S11_20180228_080003_3096.842350024_3108.65161213863_.flac",
          "noise_S11_20180320_080003_1144.15409396336_1152.85902430259_.flac")


def pulseaudio_missing() -> str | None:
    """Why the virtual device cannot be made here, or None when it can."""
    for tool in ("pulseaudio", "paplay", "pactl"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` for a virtual audio device (bash scripts/setup-dev.sh installs it)"
    return None


def soundscape(borneo_dir: Path, names: tuple[str, ...], out: Path) -> list[tuple[str, float, float]]:
    """Concatenate clips into a 16-bit WAV at ``out``; return the calls as (label, start_s, end_s)."""
    labels = {}
    for split in ("train", "devel", "test"):
        with open(borneo_dir / "lab" / f"{split}.csv") as f:
            labels.update({row["filename"]: row["label"] for row in csv.DictReader(f)})
    parts, calls, offset = [], [], 0.0
    for name in names:
        x, rate = soundfile.read(borneo_dir / "audio" / name, dtype="float32")
        assert rate == SAMPLE_RATE
        if labels[name] != "background":
            calls.append((labels[name], offset, offset + len(x) / rate))
        parts.append(x)
        offset += len(x) / rate
    soundfile.write(out, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return calls


class VirtualAudio:
    """A PulseAudio server of its own (own runtime directory, so it cannot meet another one),
    with a null sink ``virt``. ``env`` is what a client needs to play into it or record from it."""

    def __init__(self) -> None:
        # A short path: the server's unix socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="edgemon-pa-"))
        self.root.chmod(0o700)
        self.socket = self.root / "pulse" / "native"
        self.env = {"XDG_RUNTIME_DIR": str(self.root), "PULSE_SERVER": f"unix:{self.socket}",
                    "PULSE_SOURCE": "virt.monitor", "PULSE_SINK": "virt"}
        self._server_env = {**os.environ, **self.env, "HOME": str(self.root)}
        self._server_env.pop("PULSE_SERVER")

    def start(self, timeout: float = 20.0) -> None:
        subprocess.run(
            ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--disallow-exit",
             "--disable-shm=yes", f"--log-target=file:{self.root / 'pulse.log'}",
             "--load=module-native-protocol-unix auth-anonymous=1",
             "--load=module-null-sink sink_name=virt"],
            env=self._server_env, check=True, timeout=timeout, capture_output=True)
        deadline = time.monotonic() + timeout
        while subprocess.run(["pactl", "info"], env=self.client_env(), capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PulseAudio did not come up; see {self.root / 'pulse.log'}")
            time.sleep(0.1)

    def pid(self) -> int | None:
        try:
            return int((self.root / "pulse" / "pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server, as a crash would; wait until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            try:  # our own child only when the test started it directly; reap if so
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def play(self, path: Path) -> subprocess.Popen:
        return subprocess.Popen(["paplay", "-d", "virt", str(path)], env=self.client_env())

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
