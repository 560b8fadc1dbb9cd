# Stop queue.sh's background queues (run as `bash scripts/gpu/stop.sh`: a pkill typed into a
# shell's command line would match, and kill, that command itself).
pkill -f "queue.sh start"
pkill -f "benchmarks/bench_"
pkill -f "m tunebench"
sleep 2
