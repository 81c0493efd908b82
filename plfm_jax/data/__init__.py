"""Reading, simulating and feeding PLFM Sentinel-1/2 series."""
