"""The audio library: clips of 16 kHz mono PCM16 with their transcripts, and the codecs that make them."""
