"""Loopback fake LLM upstreams (OpenAI and Anthropic wire formats) with injectable faults."""

from .anthropic_server import FakeAnthropic
from .base import Fault, FakeServer
from .openai_server import FakeOpenAI

__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeServer", "Fault"]
