#!/usr/bin/env bash
# The TinyStories sample with the DEFAULT story config (params.yaml story.*): only the source changes.
# Target: the story pipeline up to story_evaluate within 15 minutes on CPU, validation perplexity
# reported, and generations from "Once upon a time" made of readable sentences.
# Run: bash bench/training/story_tinystories.sh [key=value ...]   (BENCH_SOURCE=worktree: uncommitted work too)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
data=$(cd "$repo/../shared/data/tinystories" && pwd)/stories.txt
exec bash "$repo/bench/training/story_run.sh" tinystories "story.prepare.source=$data" "$@"
