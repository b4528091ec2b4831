"""Private helpers shared across stages: file locations (`paths`), progress bars, the plug-in
`registry` and the head checkpoint format (`checkpoint`)."""
