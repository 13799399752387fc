"""data/synth subpackage."""
