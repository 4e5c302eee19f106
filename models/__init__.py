"""Pure torch.nn modules and losses: no file I/O, no config parsing, no device placement."""
