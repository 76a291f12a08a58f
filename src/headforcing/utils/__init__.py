"""What every layer uses and none owns: video files in and out, output paths, CPU threads, torchrun ranks, signals."""
