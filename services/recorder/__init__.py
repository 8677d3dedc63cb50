"""Evidence recorder: rolling camera buffers, and each alert's frames, snapshot, clip and POS events kept."""
