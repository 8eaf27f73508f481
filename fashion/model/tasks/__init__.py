"""The three tasks a dataset and a bundle can have (README, "Single-label and binary tasks").

| task       | heads                          | scored by                                    |
|------------|--------------------------------|----------------------------------------------|
| multilabel | `head_<label>` sigmoid each    | mAP, sample-F2 at per-class tuned thresholds |
| multiclass | `head_softmax` over K classes  | accuracy, top-k accuracy, macro-F1           |
| binary     | `head_sigmoid`, positive class | ROC-AUC, F1 at a tuned threshold             |

`registry.get_task(name, labels)` gives the object that training, evaluation, prediction and the model ask
(`base.Task` lists what it answers).
"""
