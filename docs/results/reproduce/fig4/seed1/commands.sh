# Figure 4b, separate-tail FOMAML: a second training seed of the k = 4 points at B = 25 and 50,
# to measure the run-to-run spread that the 95% intervals (evaluation tasks only) leave out.
# The flags are reproduce fig4's (docs/results/reproduce/fig4/runs/separate-k4-b*.log.runs.jsonl)
# with --seed 1. Run from the repository root, one per core.
for B in 25 50; do
  python -m minireptile train omniglot --defaults paper --sgd --seed 1 --train-shots 20 --learning-rate 0.0003 --meta-step 0.25 --meta-step-final 0 --eval-batch 25 --eval-iters 5 --algo fomaml --foml-tail 5 --inner-iters 4 --inner-batch $B --meta-iters 40000 --eval-interval 40000 --eval-tasks-during 1 --eval-samples 1000 --threads 1 --checkpoint docs/results/reproduce/fig4/seed1/separate-k4-b$B > docs/results/reproduce/fig4/seed1/separate-k4-b$B.out 2>&1 &
done
wait
