"""LightningDataModules. Every source is read into Hugging Face ``datasets`` first."""
