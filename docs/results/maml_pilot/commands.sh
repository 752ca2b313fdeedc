SHARED="--defaults paper --shots 1 --train-shots 10 --inner-batch 10 --inner-iters 5 --meta-batch 5 --meta-step-final 0 --eval-batch 5 --eval-iters 50 --sgd --learning-rate 0.03"
for eps in 0.5 1 2; do
  python -m minireptile train omniglot $SHARED --algo maml --foml-tail 1 --meta-step $eps --meta-iters 300 --eval-interval 100 --eval-tasks-during 20 --eval-samples 200 --threads 1 --checkpoint runs/pilot/maml-eps$eps > runs/pilot/maml-eps$eps.out 2>&1
done
for eps in 0.5; do
  python -m minireptile train omniglot $SHARED --algo fomaml --foml-tail 1 --meta-step $eps --meta-iters 994 --eval-interval 331 --eval-tasks-during 20 --eval-samples 200 --threads 1 --checkpoint runs/pilot/fomaml-eps$eps > runs/pilot/fomaml-eps$eps.out 2>&1
done
# outer Adam (--outer adam, Finn et al.'s step 0.001, constant), the same budgets
python -m minireptile train omniglot $SHARED --algo fomaml --foml-tail 1 --outer adam --meta-step 0.001 --meta-step-final 0.001 --meta-iters 994 --eval-interval 99 --eval-tasks-during 20 --eval-samples 200 --threads 1 --checkpoint runs/pilot/fomaml-adam > runs/pilot/fomaml-adam.out 2>&1
python -m minireptile train omniglot $SHARED --algo maml --foml-tail 1 --outer adam --meta-step 0.001 --meta-step-final 0.001 --meta-iters 300 --eval-interval 30 --eval-tasks-during 20 --eval-samples 200 --threads 1 --checkpoint runs/pilot/maml-adam > runs/pilot/maml-adam.out 2>&1
