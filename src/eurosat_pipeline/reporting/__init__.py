"""Reading a trained model's results: the evaluate stage's metrics and plots, the HTML report,
the model card, and the pull-request comparison that CML posts.
"""
