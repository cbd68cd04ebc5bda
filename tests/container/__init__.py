"""Tests that run the real stack in containers (skipped with a reason when no engine answers)."""
