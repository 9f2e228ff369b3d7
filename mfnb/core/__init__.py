"""Basic utilities every layer uses: parameters and profiles, paths, atomic writes, progress bars, secrets, the
allocator setting, formatting, shared plots, the papers' reference numbers, and ``"module:attr"`` names."""
