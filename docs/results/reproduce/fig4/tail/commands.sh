# Figure 4b, separate-tail FOMAML at B = 50 (k = 4): two variants of reproduce fig4's run
# (docs/results/reproduce/fig4/runs/separate-k4-b50.log.runs.jsonl), to look for why it is
# 2.8 points below B = 25. There the tail is 5 shots per class (25 images) and the first
# three batches of 50 cycle twice through the other 75 images.
#   tail10: a tail as large as the batches (--foml-tail 10: 50 images); the first three
#           batches are then the other 50 images each time, in a new order.
#   replacement: the same tail of 25, the first three batches drawn afresh (--replacement)
#           instead of cycling twice through the 75.
# Run from the repository root, one per core.
SHARED="--defaults paper --sgd --seed 0 --train-shots 20 --learning-rate 0.0003 --meta-step 0.25 --meta-step-final 0 --eval-batch 25 --eval-iters 5 --algo fomaml --inner-iters 4 --inner-batch 50 --meta-iters 40000 --eval-interval 40000 --eval-tasks-during 1 --eval-samples 1000 --threads 1"
D=docs/results/reproduce/fig4/tail
python -m minireptile train omniglot $SHARED --foml-tail 10 --checkpoint $D/tail10-k4-b50 > $D/tail10-k4-b50.out 2>&1 &
python -m minireptile train omniglot $SHARED --foml-tail 5 --replacement --checkpoint $D/replacement-k4-b50 > $D/replacement-k4-b50.out 2>&1 &
wait
