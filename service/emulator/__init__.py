"""The OpenAI Videos API emulator, for local runs and tests."""

from service.emulator.app import Emulator, EmulatorConfig

__all__ = ["Emulator", "EmulatorConfig"]
